"""Training progress for a quiet front end: one JSON line per finished epoch, appended to the file named by
``$SPARSEPIPE_PROGRESS`` (unset: nothing is written).

``make demo`` sends every log line to a file and draws a progress bar from these events instead; the file reaches
the pipeline's step processes through the environment they inherit.
"""

from __future__ import annotations

import json
import os
import time

ENV = "SPARSEPIPE_PROGRESS"
HOLD_ENV = "SPARSEPIPE_FAULT_HOLD"  # fault tests: "EVENT[:EPOCH]" -> the process pauses right after that event


def emit(**event) -> None:
    """Append ``event`` (plus a timestamp) as one line; small O_APPEND writes from several processes stay whole."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"time": round(time.time(), 3), "pid": os.getpid(), **event}, default=str) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # progress is a courtesy: training never fails for it
    _hold(event)


def _hold(event: dict) -> None:
    """Fault tests (``benchmarks/fault_driver.py``): pause for up to 120 s at the named event, so the driver can
    kill this process at exactly that point (after the event's line is in the progress file)."""
    want = os.environ.get(HOLD_ENV, "")
    name, _, epoch = want.partition(":")
    if want and event.get("event") == name and (not epoch or str(event.get("epoch")) == epoch):
        from sparse_core import preemption

        for _ in range(1200):  # a SIGTERM deferred by training ends the pause (time.sleep resumes after a handler)
            if preemption.requested():
                return
            time.sleep(0.1)


def on_fit_epoch_end(trainer) -> None:
    """Ultralytics callback: epoch ``k`` of ``n`` (absolute, as the recipe counts them) is done."""
    emit(event="epoch", epoch=int(trainer.epoch) + 1, epochs=int(trainer.epochs), name=str(trainer.args.name))
