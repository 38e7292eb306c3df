"""MLflow logging for a training run: params at setup, metrics every epoch, artifacts at the end.

The run is opened before training so its id goes into every checkpoint (export/registry then log into the run
that produced the model). Ultralytics' own MLflow callback stays off (``offline.make_offline``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

# Ultralytics validator keys -> our standard metric names (sparse_core.tracking.keys)
ULTRA_TO_STD = {
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
    "metrics/mAP50(M)": "mask_map50",
    "metrics/mAP50-95(M)": "mask_map50_95",
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
}


def standard_metrics(metrics: dict, task: str) -> dict[str, float]:
    """Ultralytics validator metrics -> map50, map50_95, precision, recall (+ mask_* for segment); 0.0 if missing."""
    std = {ULTRA_TO_STD[k]: float(v) for k, v in metrics.items() if k in ULTRA_TO_STD and isinstance(v, (int, float))}
    return {k: std.get(k, 0.0) for k in ULTRA_TO_STD.values() if task == "segment" or not k.startswith("mask_")}


TRAIN_ARG_KEYS = ("model", "data", "epochs", "imgsz", "batch", "nbs", "workers", "optimizer", "lr0", "lrf",
                  "momentum", "weight_decay", "warmup_epochs", "seed", "deterministic", "device", "task")


def model_family(model: str) -> dict[str, str]:
    """e.g. yolov8n-seg.yaml -> family yolov8, scale n, task segment (best effort from the name)."""
    import re

    stem = Path(str(model)).stem.lower()
    m = re.match(r"(yolov?\d+)([nslmx])?", stem)
    return {"model.family": m.group(1) if m else stem, "model.scale": (m.group(2) or "") if m else ""}


def training_callbacks(tracker, recipe, params: dict) -> list:
    """(event, fn) pairs for SparseRun.callbacks."""

    def on_setup(trainer):
        args = {f"train.{k}": getattr(trainer.args, k, None) for k in TRAIN_ARG_KEYS}
        logged = {**params, **args, **model_family(params.get("base") or trainer.args.model)}
        if recipe is not None:
            logged.update({f"recipe.var.{k}": v for k, v in recipe.variables.items()})
            logged.update(recipe.summary())
        tracker.log_params(logged)

    def on_epoch(trainer):
        metrics = {}
        if trainer.tloss is not None:
            metrics.update(trainer.label_loss_items(trainer.tloss, prefix="train"))
        for key, value in (trainer.metrics or {}).items():
            metrics[ULTRA_TO_STD.get(key, key)] = value
        metrics.update(getattr(trainer, "lr", {}) or {})
        if trainer.sparsity_history:
            metrics["sparsity"] = trainer.sparsity_history[-1][1]
        tracker.log_metrics(metrics, step=int(trainer.epoch))  # the tracker converts (and skips non-numbers)

    return [("on_pretrain_routine_end", on_setup), ("on_fit_epoch_end", on_epoch)]


def log_run_artifacts(tracker, recipe, save_dir: Path, summary: dict) -> None:
    """Recipe (original + resolved), summary, per-layer sparsity CSV/PNG, curves, final metrics."""
    if recipe is not None:
        name = Path(recipe.path).name if recipe.path else "recipe.yaml"
        tracker.log_text(recipe.original_text, f"recipe/original/{name}")
        tracker.log_text(recipe.to_yaml(), "recipe/resolved.yaml")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["layer", "sparsity"])
    writer.writerows(summary["layer_sparsity"].items())
    tracker.log_text(buf.getvalue(), "sparsity/layer_sparsity.csv")
    for name in ("summary.json", "results.csv", "args.yaml"):
        if (save_dir / name).is_file():
            tracker.log_artifact(save_dir / name)
    for png in sorted(save_dir.glob("*.png")):
        tracker.log_artifact(png, "plots")
    final = {k: summary[k] for k in ("map50", "map50_95", "mask_map50", "mask_map50_95", "sparsity") if k in summary}
    tracker.log_metrics(final)
