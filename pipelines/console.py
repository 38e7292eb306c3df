"""A quiet terminal for long runs (``make demo``): a line per stage and per pipeline step with its time, a
progress bar while a model trains, and everything else (Ultralytics argument dumps, KFP executor JSON, warnings)
in a log file.

Quiet mode points file descriptors 1 and 2 at the log, so output from any library, thread or child process lands
there; the terminal keeps a private copy of the original stdout. A watcher thread reads two things as they grow:
the log, for kfp.local's "Executing task" / "finished with status" lines, and a progress file that training
appends epoch events to (``sparse_core.progress``). When stdout is not a terminal (CI, a pod log, ``make demo >
log``) the live line is not redrawn: each step and training prints its finished line only, so captured output
stays a line per stage and step instead of one line per redraw. ``verbose`` leaves the descriptors alone and prints everything.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path

from sparse_core import progress

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TASK_START = re.compile(r"Executing task '([\w-]+)'")
TASK_END = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
BAR = 20


class Console:
    """``with Console(log, verbose) as con:`` then ``con.line(text)``, ``con.begin(label)``, ``con.end(detail)``."""

    def __init__(self, log_path: Path, verbose: bool = False):
        self.log_path, self.verbose = Path(log_path), verbose
        self.progress_path = self.log_path.with_suffix(".progress.jsonl")
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()  # the watcher and ``sync`` read the same offsets
        self._stop = threading.Event()
        self._live: dict | None = None  # the line being redrawn: label, start time, epoch, epochs
        self._offsets = {"log": 0, "progress": 0}
        self.tty = False  # set on entering quiet mode: whether the terminal copy is a terminal (redraws allowed)

    # ------------------------------------------------------------------------------------------ set up / tear down

    def __enter__(self) -> "Console":
        if self.verbose:
            self.term = sys.stdout
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.term = os.fdopen(os.dup(1), "w", buffering=1)
        self.tty = self.term.isatty()
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        sys.stdout.reconfigure(line_buffering=True)  # task lines reach the log (and the watcher) at once
        self.progress_path.unlink(missing_ok=True)
        os.environ[progress.ENV] = str(self.progress_path)
        self._thread = threading.Thread(target=self._watch, name="console-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.verbose:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()
        self.end("" if exc[0] is None else "interrupted" if exc[0] is KeyboardInterrupt else "failed")
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        os.environ.pop(progress.ENV, None)
        self.term.close()
        self.term = sys.stdout

    # ------------------------------------------------------------------------------------------ output

    def line(self, text: str = "") -> None:
        """A line on the terminal (and, in quiet mode, in the log too)."""
        with self._lock:
            self._finish_live("")
            self._write(text + "\n")
        if not self.verbose:
            print(text, flush=True)

    def begin(self, label: str) -> None:
        """Start a redrawn line for ``label``; training epochs turn it into a progress bar until ``end``."""
        with self._lock:
            self._finish_live("")
            self._live = {"label": label, "t0": time.time(), "epoch": 0, "epochs": 0}
            self._draw()

    def end(self, detail: str = "") -> None:
        with self._lock:
            self._finish_live(detail)

    def sync(self) -> None:
        """Take in what the log and progress file hold now (the watcher polls only every half second)."""
        if not self.verbose:
            sys.stdout.flush()
            self._poll()

    # ------------------------------------------------------------------------------------------ internals

    def _write(self, text: str) -> None:
        self.term.write(text)
        self.term.flush()

    def _draw(self, final: str | None = None) -> None:
        if self.verbose or self._live is None or (final is None and not self.tty):
            return  # not a terminal (CI, a pod log, `make demo > log`): no redraws, only the finished line
        live = self._live
        text = f"      {live['label']:<22}"
        if live["epochs"]:
            done = min(live["epoch"], live["epochs"])
            filled = round(BAR * done / live["epochs"])
            text += f" [{'#' * filled}{'.' * (BAR - filled)}] {done}/{live['epochs']} epochs"
        text += f" {time.time() - live['t0']:5.0f}s"
        if final is not None:
            text += f"  {final}" if final else ""
        self._write(("\r" if self.tty else "") + text + ("\n" if final is not None else ""))

    def _finish_live(self, detail: str) -> None:
        if self._live is not None:
            self._draw(final=detail)
            self._live = None

    def _watch(self) -> None:
        ticks = 0
        while not self._stop.wait(0.5):
            self._poll()
            ticks += 1
            if ticks % 2 == 0:  # the clock on the live line moves every second, between epochs too
                with self._lock:
                    self._draw()

    def _poll(self) -> None:
        with self._poll_lock:
            self._poll_files()

    def _poll_files(self) -> None:
        for kind, path, handle in (("log", self.log_path, self._on_log_line),
                                   ("progress", self.progress_path, self._on_progress_line)):
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets[kind])
                    data = f.read()
            except OSError:
                continue
            complete = data[:data.rfind(b"\n") + 1]  # a half-written last line waits for the next poll
            self._offsets[kind] += len(complete)
            for raw in complete.decode(errors="replace").splitlines():
                handle(raw)

    def _on_log_line(self, raw: str) -> None:
        text = ANSI.sub("", raw)
        start, end = TASK_START.search(text), TASK_END.search(text)
        if start:
            self.begin(start.group(1).replace("-", "_"))
        elif end:
            self.end(end.group(2))

    def _on_progress_line(self, raw: str) -> None:
        try:
            event = json.loads(raw)
        except json.JSONDecodeError:
            return
        with self._lock:
            if event.get("event") == "epoch" and self._live is not None:
                self._live.update(epoch=int(event["epoch"]), epochs=int(event["epochs"]))
                self._draw()
