"""A training step's working folder on the data volume, so a killed or evicted attempt is resumed, not redone.

The step cache (``sparse_core.step_cache``) keeps finished steps only; a pod's own disk dies with the pod. So
``sparse_train`` and ``qat`` train in ``ROOT/<step>/<key>.work/`` beside the cache entry their content key names
(ROOT: the step cache root, i.e. the data PVC in a cluster): ``train/weights/last.pt`` each epoch (masks, recipe
position and the exact fp32 state, see ``integrations.ultralytics.trainer``), ``history.jsonl`` (one metric row
per finished epoch, so the retry logs every epoch once, at its own step) and ``run.json`` (the MLflow run ids of
the attempts). A retry with the same key finds it; once the entry is stored the folder is removed.
No step cache (``cache_dir=none``): no working folder, and a retry starts over.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from sparse_core.atomic import write_json
from sparse_core.step_cache import cache_key, cache_root

HISTORY = "history.jsonl"
RUN = "run.json"


def work_dir(step: str, parts: dict, cache_dir: str | None = None) -> Path | None:
    """``ROOT/<step>/<key>.work`` (created), or None when the step cache is off."""
    root = cache_root(cache_dir)
    if root is None:
        return None
    work = root / step / f"{cache_key(step, parts)}.work"
    work.mkdir(parents=True, exist_ok=True)
    return work


def resumable(work: Path | None) -> Path | None:
    """The ``last.pt`` an earlier attempt left mid-training (None: nothing to resume, start fresh)."""
    if work is None:
        return None
    from sparse_core.checkpoint import load_checkpoint, sparsepipe_meta

    last = work / "train" / "weights" / "last.pt"
    if not last.is_file() or (work / "train" / "summary.json").is_file():
        return None
    try:
        ckpt = load_checkpoint(last)
    except Exception:  # noqa: BLE001 - an unreadable file cannot be resumed; training starts over
        return None
    return last if "train_state" in sparsepipe_meta(ckpt) and ckpt.get("optimizer") is not None else None


def finished_summary(work: Path | None) -> dict | None:
    """The training summary an earlier attempt wrote just before it was stopped (training complete), or None."""
    path = work / "train" / "summary.json" if work is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_history(work: Path | None) -> list[dict]:
    """The metric rows of the epochs earlier attempts finished."""
    rows: list[dict] = []
    path = work / HISTORY if work is not None else None
    if path is None or not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by SIGKILL
        if isinstance(row, dict) and "epoch" in row and all(r["epoch"] != row["epoch"] for r in rows):
            rows.append(row)
    return rows


def history_writer(work: Path | None):
    """``keep(row)``: append one epoch's row to the working folder (None without one)."""
    if work is None:
        return None

    def keep(row: dict) -> None:
        fd = os.open(work / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(row) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    return keep


def note_run(work: Path | None, run_id: str) -> None:
    """Record this attempt's MLflow run id (a retry in the same pipeline run reopens the same run)."""
    if work is None:
        return
    info = _run_info(work)
    info.setdefault("attempts", []).append({"mlflow_run_id": run_id})
    write_json(work / RUN, info)


def _run_info(work: Path) -> dict:
    try:
        return json.loads((work / RUN).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def done(work: Path | None) -> None:
    """The step's entry is stored: its working folder is no longer needed."""
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
