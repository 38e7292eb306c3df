"""DeepSparse through its side venv: DeepSparse 1.8 (the seeds' runtime, unmaintained) needs numpy<2 and onnx 1.14,
which cannot share the main venv, so ``make deepsparse-venv`` builds ``.venv-deepsparse/`` (gitignored) and the
benchmark drives a worker process there (``deepsparse_worker``) one run at a time over a pipe (``pipe_worker``).
The worker returns DeepSparse's log, from which the natively compiled share of the graph is read.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from sparse_core.bench import pipe_worker
from sparse_core.bench.engines import Loaded
from sparse_core.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
ENV = "SPARSEPIPE_DEEPSPARSE_PYTHON"
HINT = ("build the side venv with `make deepsparse-venv` (python -m venv .venv-deepsparse && .venv-deepsparse/bin/pip "
        "install deepsparse==1.8.0 'numpy<2' onnx==1.14.1), or set $SPARSEPIPE_DEEPSPARSE_PYTHON to its python")
# DeepSparse 1.8 at NM_LOGGING_LEVEL=diagnose: "== NM Execution Provider supports 0% of the network" (what it does
# not take runs in its bundled onnxruntime), with one line per refused node ("... : kernel is not constant")
NATIVE = re.compile(r"supports\s+(\d+(?:\.\d+)?)\s*%\s+of the network|(\d+(?:\.\d+)?)\s*%[^\n%]{0,40}natively",
                    re.IGNORECASE)


def python() -> Path:
    """The side venv's interpreter ($SPARSEPIPE_DEEPSPARSE_PYTHON, else .venv-deepsparse/ in the checkout)."""
    p = Path(os.environ.get(ENV) or ROOT / ".venv-deepsparse" / "bin" / "python")
    if not p.is_file():
        raise UserError(f"--engine deepsparse: {p} not found; {HINT}")
    return p


def native_share(log: str) -> float | None:
    """Fraction of the graph DeepSparse compiled natively, from its log (None when the log does not say)."""
    found = [float(a or b) for a, b in NATIVE.findall(log)]
    return found[-1] / 100 if found else None


def load(path: Path, x: np.ndarray, threads: int) -> Loaded:
    worker = Path(__file__).with_name("deepsparse_worker.py")
    cmd = [str(python()), str(worker), str(path), json.dumps(list(x.shape)), str(x.dtype), str(threads)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc, hello = pipe_worker.start(cmd, env, path, "DeepSparse", HINT)
    share = native_share(hello["log"])
    fallback = share is not None and share < 1.0
    refused = sorted({ln.split("Message:", 1)[1].strip() for ln in hello["log"].splitlines() if "Message:" in ln})
    extra = {"native_share": share, "deepsparse_refusals": refused[:20], "deepsparse_log_tail": hello["log"][-2000:],
             "python": str(python()), "fallback_note": "part of the graph runs in DeepSparse's bundled onnxruntime"
             if fallback else None}
    return Loaded(pipe_worker.runner(proc, path, "DeepSparse"), hello["version"],
                  "f32 (int8 where compiled natively)", extra=extra, close=proc.kill)


if __name__ == "__main__":  # `python -m sparse_core.bench.deepsparse_venv` prints the side venv's interpreter
    print(python())
    sys.exit(0)
