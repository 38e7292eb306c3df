"""One training stage of a pipeline step (sparse_train, qat) on Ultralytics: train, keep ``model.pt`` + summary.

The step owns the MLflow run (its child run under the pipeline's parent) and the cache; this module only trains,
so ``run.train`` is called with tracking off (it would otherwise open a second, unparented run whenever
``MLFLOW_TRACKING_URI`` is set, as it is in a pod) and the per-epoch rows come back in ``history`` for the step
to log.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sparse_core.atomic import write_json
from sparse_core.integrations.ultralytics.tracking import ULTRA_TO_STD
from sparse_core.step_cache import link_or_copy

VAL_KEYS = tuple(ULTRA_TO_STD.values())  # the validation metrics a stage summary carries


@dataclass(frozen=True)
class TrainSettings:
    """How a stage trains (the KFP parameters sparse_train and qat share)."""

    epochs: int = 0  # when the recipe does not set them (or without a recipe); 0 = Ultralytics' default
    imgsz: int = 640
    batch: int = 16
    workers: int = 2
    seed: int = 0
    device: str = ""  # Ultralytics device ('cpu', '0'); empty = GPU when present
    plots: bool = False
    teacher: str = ""  # a fetch_checkpoint output folder of a distillation teacher, or ''


@dataclass(frozen=True)
class StageInputs:
    """What a stage trains from: model argument for ``run.train``, the data set and their identities."""

    model: str
    data_yaml: Path
    data_hash: str
    base: str  # lineage: the model the chain started from
    teacher: str = ""  # model argument of the teacher, or ''


def epoch_logger(history: list[dict], keep=None):
    """Ultralytics callback: one row of standard metrics per epoch (losses, mAP, lr, sparsity); ``keep(row)``
    also stores each row (the step's working folder, so a resumed attempt logs every epoch once)."""
    from sparse_core.tracking.tracker import metric_key

    def on_fit_epoch_end(trainer) -> None:
        epoch = int(trainer.epoch) + 1
        if epoch > int(trainer.epochs) or any(r["epoch"] == epoch for r in history):
            return  # Ultralytics calls this once more after its final validation of best.pt
        row: dict[str, float] = {"epoch": epoch}
        for k, v in (trainer.metrics or {}).items():
            if isinstance(v, (int, float)):
                row[ULTRA_TO_STD.get(k, metric_key(k))] = float(v)
        try:
            losses = trainer.label_loss_items(trainer.tloss, prefix="train")
            row.update({metric_key(k): float(v) for k, v in losses.items()})
        except Exception:  # noqa: BLE001 - a trainer without loss names still logs the rest
            pass
        for k, v in (getattr(trainer, "lr", None) or {}).items():
            row[metric_key(k)] = float(v)
        hist = getattr(trainer, "sparsity_history", None)
        if hist:
            row["sparsity"] = float(hist[-1][1])
        history.append(row)
        if keep is not None:
            keep(row)

    return on_fit_epoch_end


def train_stage(out: Path, inputs: StageInputs, recipe, settings: TrainSettings, run_id: str,
                work: Path | None = None) -> dict:
    """Train ``recipe`` (a Recipe, parsed once by the step; None = dense fine-tuning) into ``out``.

    ``work`` (``sparse_core.step_work``): the step's working folder on the data volume, which outlives the pod. The
    training runs there (``last.pt`` each epoch, the per-epoch metric rows, the MLflow run id); a retry that finds
    a resumable ``last.pt`` continues it with ``--resume`` semantics (same masks, same recipe position, only the
    remaining epochs). SIGTERM stops training at the next batch boundary (``sparse_core.preemption``).
    """
    from sparse_core import preemption, step_work
    from sparse_core.integrations.ultralytics import run

    folder = work if work is not None else out
    history = step_work.load_history(work)
    callbacks = [("on_fit_epoch_end", epoch_logger(history, step_work.history_writer(work))),
                 ("on_train_batch_end", preemption.at_safe_point),
                 ("on_train_epoch_start", preemption.at_safe_point)]  # between epochs: before a batch runs
    resume, finished = step_work.resumable(work), step_work.finished_summary(work)
    step_work.note_run(work, run_id)
    t0 = time.perf_counter()
    with preemption.deferred():
        if finished is not None:  # stopped after training, before the step stored its output
            summary = finished
        elif resume is not None:
            summary = run.train(data=str(inputs.data_yaml), resume=str(resume), workers=int(settings.workers),
                                callbacks=callbacks, track=False)
        else:
            summary = run.train(
                model=inputs.model, data=str(inputs.data_yaml), recipe=recipe, epochs=int(settings.epochs) or None,
                imgsz=int(settings.imgsz), batch=int(settings.batch), workers=int(settings.workers),
                project=str(folder), name="train", seed=int(settings.seed), plots=bool(settings.plots),
                device=settings.device or None, meta={"data_hash": inputs.data_hash, "base": inputs.base,
                                                       "mlflow_run_id": run_id},
                callbacks=callbacks, teacher=inputs.teacher or None, track=False)
    return finish_training(out, summary, recipe is not None, inputs, settings, history, time.perf_counter() - t0)


def finish_training(o: Path, summary: dict, had_recipe: bool, inputs: StageInputs, settings: TrainSettings,
                    history: list, seconds: float) -> dict:
    """Keep what later steps need (model.pt + summary), drop the bulky training folder.

    With a recipe the recipe's end state is the product (``last.pt``: the final sparsity/quantization), re-validated
    when it differs from the ``best.pt`` Ultralytics summarised; without one, ``best.pt``.
    """
    from sparse_core.checkpoint import checkpoint_model, load_checkpoint
    from sparse_core.integrations.ultralytics.run import val
    from sparse_core.sparsity import weight_sparsity

    best, last = Path(summary["weights"]["best"]), Path(summary["weights"]["last"])
    chosen = last if (had_recipe and last.is_file()) or not best.is_file() else best
    metrics = {k: summary.get(k, 0.0) for k in VAL_KEYS if k in summary}
    sparsity = summary.get("sparsity", 0.0)
    if chosen != best:
        v = val(str(chosen), data=str(inputs.data_yaml), imgsz=settings.imgsz, batch=settings.batch,
                device=settings.device or None)
        metrics = {k: v[k] for k in VAL_KEYS if k in v}
        sparsity = weight_sparsity(checkpoint_model(load_checkpoint(chosen)))[0]
    link_or_copy(chosen, o / "model.pt")
    train_dir = Path(summary.get("save_dir") or o / "train")
    for name in ("results.csv", "layer_sparsity.png", "sparsity_over_epochs.png"):
        if (train_dir / name).is_file():
            link_or_copy(train_dir / name, o / name)
    if train_dir.parent == o:  # a working folder elsewhere (step_work) stays until the step's entry is stored
        shutil.rmtree(train_dir, ignore_errors=True)  # weights/ with last+best (resume state): not needed downstream
    result = {
        "weights": "model.pt", "chosen": chosen.name, **metrics, "sparsity": float(sparsity),
        "epochs": summary.get("epochs"), "task": summary.get("task"), "imgsz": summary.get("imgsz"),
        "recipe_sha256": summary.get("recipe_sha256"), "data_hash": inputs.data_hash, "base": inputs.base,
        "train_seconds": round(seconds, 3), "history": history,
    }
    if (o / "recipe.full.yaml").is_file():
        from sparse_core.tracking.lineage import file_sha256

        result["recipe_full_sha256"] = file_sha256(o / "recipe.full.yaml")
    write_json(o / "summary.json", result)
    return result
