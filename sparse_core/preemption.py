"""SIGTERM as a pod eviction: stop at a safe point, keep what is saved, exit non-zero so the retry resumes.

Kubernetes evicts a pod (spot/preemptible node, drain) with SIGTERM, a grace period (30 s by default), then
SIGKILL. Python's default for SIGTERM is to die at once, mid-write and without flushing MLflow. A pipeline step
runs inside ``installed()``; there SIGTERM raises ``Preempted`` in the main thread, which the step's MLflow run
records (status KILLED, queued metrics flushed for at most ``FLUSH_SECONDS``) before the process exits non-zero.

Inside ``deferred()`` (training) the signal only sets a flag, and the trainer calls ``check()`` at every batch
boundary: the batch in progress finishes, the epoch's ``last.pt`` written before it stays the resume point.
Bound: SIGTERM -> exit within one training batch + ``FLUSH_SECONDS`` + process teardown; every file the step
writes is written to a temp path and renamed, so an exception at any other point leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

FLUSH_SECONDS = 10.0  # MLflow flush budget after SIGTERM (well inside Kubernetes' default 30 s grace period)
EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM


class Preempted(BaseException):
    """SIGTERM arrived: the step stops (a BaseException, so ``except Exception`` blocks do not swallow it)."""

    def __init__(self, where: str = ""):
        super().__init__(f"preempted (SIGTERM){' ' + where if where else ''}: stopped; a retry resumes")


_state = {"requested_at": 0.0, "defer": 0}


def requested() -> bool:
    """True once SIGTERM has arrived in this process."""
    return _state["requested_at"] > 0


def requested_at() -> float:
    """``time.monotonic()`` when SIGTERM arrived (0 if it has not)."""
    return _state["requested_at"]


def _on_sigterm(signum, frame) -> None:
    if not _state["requested_at"]:
        _state["requested_at"] = time.monotonic()
    if not _state["defer"]:
        raise Preempted()


@contextlib.contextmanager
def installed():
    """Route SIGTERM to ``Preempted`` inside the block, then restore the previous handler (main thread only:
    elsewhere Python cannot set handlers and the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred():
    """SIGTERM only sets the flag inside this block; the code inside calls ``check()`` at its safe points."""
    _state["defer"] += 1
    try:
        yield
    finally:
        _state["defer"] -= 1
    check("after training")


def check(where: str = "") -> None:
    """Raise ``Preempted`` if SIGTERM has arrived (a safe point: nothing is half-written here)."""
    if requested():
        raise Preempted(where)


def at_safe_point(trainer) -> None:
    """Ultralytics callback at a batch boundary or an epoch start: the safe points of a training loop."""
    check(f"at epoch {int(trainer.epoch) + 1}")
