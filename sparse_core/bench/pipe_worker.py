"""A model compiled in a worker process, run on request over a pipe: for engines that cannot share this process
(DeepSparse needs numpy<2; OpenVINO with oneDNN's ISA capped reads the cap once per process). The protocol is one
line each way: on start the worker answers a JSON "hello" (or {"error"}); "run" runs one batch and answers "ok";
any other request line is the worker's own (e.g. "profile N"); end of input ends it. The pipe adds a few
microseconds per run, small beside a YOLO inference; timing stays in the benchmark's loop, interleaved like the
in-process engines."""

from __future__ import annotations

import atexit
import json
import subprocess
from pathlib import Path
from typing import Callable

from sparse_core.errors import UserError


def start(cmd: list[str], env: dict, path: Path, what: str, hint: str = "") -> tuple[subprocess.Popen, dict]:
    """Start the worker; its hello, or a one-line UserError naming the model (the worker's error, or its output)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
    atexit.register(proc.kill)
    first = proc.stdout.readline()
    try:
        hello = json.loads(first)
    except json.JSONDecodeError:
        proc.kill()
        raise UserError(f"{path}: {what} worker failed to start ({first.strip()[:200] or 'no output'})"
                        + (f"; {hint}" if hint else "")) from None
    if "error" in hello:
        proc.kill()
        raise UserError(f"{path}: {what} cannot run this model ({hello['error']})")
    return proc, hello


def request(proc: subprocess.Popen, line: str, path: Path, what: str) -> str:
    """Send one request line; its one-line answer (a dead worker is a RuntimeError: a bug, not bad input)."""
    proc.stdin.write(line + "\n")
    answer = proc.stdout.readline()
    if not answer:
        raise RuntimeError(f"{what} worker for {path} died (exit {proc.poll()})")
    return answer


def runner(proc: subprocess.Popen, path: Path, what: str) -> Callable[[], None]:
    """The zero-argument ``run`` of the timing loop."""
    def run() -> None:
        if request(proc, "run", path, what) != "ok\n":
            raise RuntimeError(f"{what} worker for {path} answered out of protocol")
    return run
