"""``train`` and ``val``: validate inputs up front, run the Ultralytics trainer with a recipe, write summary.json.

Model sources: an Ultralytics model yaml (random init, e.g. ``yolov8n.yaml``, ``yolov5nu.yaml``,
``yolov3-tinyu.yaml``, ``yolov8n-seg.yaml``), a local ``.pt`` (Ultralytics' or ours) or a ``zoo:`` stub.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from sparse_core.checkpoint import checkpoint_model, load_checkpoint, sparsepipe_meta
from sparse_core.errors import UserError
from sparse_core.integrations.ultralytics import offline
from sparse_core.integrations.ultralytics.tracking import log_run_artifacts, training_callbacks
from sparse_core.integrations.ultralytics.trainer import LR_MODIFIERS, TRAINERS, SparseRun

MODEL_SUFFIXES = (".yaml", ".yml", ".pt")


def _check_data(data: str | os.PathLike) -> dict:
    """Fail fast with the file and field, instead of Ultralytics' download attempt or a deep traceback."""
    path = Path(data)
    if not path.is_file():
        raise UserError(f"{path}: data yaml not found")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a mapping with 'train', 'val' and 'names'")
    for key in ("train", "val", "names"):
        if key not in cfg:
            raise UserError(f"{path}: missing field '{key}' (an Ultralytics data yaml needs train, val, names)")
    root = Path(cfg.get("path") or path.parent)
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    for key in ("train", "val"):
        for entry in cfg[key] if isinstance(cfg[key], list) else [cfg[key]]:
            target = Path(entry) if Path(entry).is_absolute() else root / entry
            if not target.exists():
                raise UserError(f"{path}: field '{key}': {target} does not exist")
    return cfg


def _model_task(model: str, ckpt: dict | None) -> str:
    if ckpt is not None:
        task = getattr(checkpoint_model(ckpt), "task", None) or sparsepipe_meta(ckpt).get("task")
        if task:
            return task
    return "segment" if "-seg" in Path(model).stem else "detect"


def _resolve_model(model: str, zoo: str | None) -> tuple[str, dict | None]:
    if model.startswith("zoo:"):
        from sparse_core.zoo import resolve_model

        model = str(resolve_model(model, zoo=zoo))
    if not model.endswith(MODEL_SUFFIXES):
        raise UserError(f"--model {model}: expected an Ultralytics model yaml, a .pt checkpoint or a zoo: stub")
    if model.endswith(".pt"):
        return model, load_checkpoint(model)
    from ultralytics.nn.tasks import yaml_model_load

    try:
        yaml_model_load(model)
    except (FileNotFoundError, OSError):
        raise UserError(f"--model {model}: model yaml not found (neither a file nor an Ultralytics model name)") from None
    return model, None


def _load_recipe(recipe: str | None, recipe_args, zoo: str | None):
    if not recipe:
        return None
    from sparse_core.recipe import load_recipe

    if recipe.startswith("zoo:"):
        from sparse_core.zoo import resolve_recipe

        recipe = str(resolve_recipe(recipe, zoo=zoo))
    return load_recipe(recipe, recipe_args)


def train(
    model: str | None = None,
    data: str | None = None,
    recipe: str | None = None,
    recipe_args: dict | str | None = None,
    epochs: int | None = None,
    imgsz: int = 640,
    batch: int = 16,
    workers: int = 8,
    gradient_accum_steps: int = 1,
    project: str | os.PathLike = "runs/sparsepipe",
    name: str = "train",
    resume: str | None = None,
    seed: int = 0,
    zoo: str | None = None,
    plots: bool = True,
    device: str | None = None,
    extra_args: dict[str, Any] | None = None,
    meta: dict | None = None,
    callbacks: list | None = None,
    mlflow: str | None = None,
    experiment: str = "sparsepipe",
    parent_run_id: str | None = None,
    teacher: str | None = None,
) -> dict:
    """Train with an optional recipe; returns (and writes) the run summary.

    ``teacher`` (distillation modifiers): a checkpoint path, ``zoo:`` stub, ``self`` or ``disable``.

    With ``mlflow`` (or ``MLFLOW_TRACKING_URI``) set, the run is recorded in MLflow and its id stored in every
    checkpoint, so export/register later log into the same run.
    """
    offline.make_offline()
    if resume:
        return _resume(resume, data=data, workers=workers, callbacks=callbacks, mlflow=mlflow)
    if model is None or data is None:
        raise UserError("train needs --model and --data (or --resume CKPT)")
    if batch is None or batch < 1:
        raise UserError(f"--batch {batch}: expected a positive integer")
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs {epochs}: expected a positive integer")
    if gradient_accum_steps < 1:
        raise UserError(f"--gradient-accum-steps {gradient_accum_steps}: expected a positive integer")
    if imgsz < 32:
        raise UserError(f"--imgsz {imgsz}: expected at least 32")
    _check_data(data)
    base = model
    model, ckpt = _resolve_model(model, zoo)
    if ckpt is not None and sparsepipe_meta(ckpt).get("quantized"):
        # Ultralytics rebuilds the float model from its yaml and copies matching weights: BN (moved into the QAT
        # ConvBn2d) and the quantization grid would be silently lost
        raise UserError(f"--model {model}: is a quantized (QAT) checkpoint; start new training from the float "
                        "checkpoint before QAT, or continue this run with --resume")
    task = _model_task(model, ckpt)
    rec = _load_recipe(recipe, recipe_args, zoo)
    recipe_epochs = rec.num_epochs() if rec is not None else None
    n_epochs = math.ceil(recipe_epochs) if recipe_epochs else (epochs or 100)
    save_dir = (Path(project) / name).resolve()
    args = {
        "model": model,
        "data": str(Path(data).resolve()),
        "task": task,
        "epochs": n_epochs,
        "imgsz": imgsz,
        "batch": batch,
        "workers": workers,
        "nbs": batch * gradient_accum_steps,  # Ultralytics accumulates round(nbs / batch) batches per step
        "save_dir": str(save_dir),
        "exist_ok": True,
        "seed": seed,
        "deterministic": True,
        "plots": plots,
        "device": device or ("0" if _cuda() else "cpu"),
        "verbose": False,
    }
    if rec is not None and rec.of_type(*LR_MODIFIERS):
        # The recipe owns the learning rate: plain SGD, no Ultralytics warmup fighting its schedule.
        args.update(optimizer="SGD", warmup_epochs=0)
    args.update(extra_args or {})
    from sparse_core.distillation import resolve_spec

    teacher = resolve_spec(teacher, zoo)
    run_meta = {"base": base, **(meta or {}), **({"teacher": teacher} if teacher else {})}
    tracker = _start_tracker(mlflow, experiment, name, parent_run_id, rec, data, run_meta)
    params = {"base": base, "data_hash": run_meta.get("data_hash"), "recipe_args": rec.args if rec else None,
              "gradient_accum_steps": gradient_accum_steps}
    sparse = SparseRun(recipe=rec, seed=seed, meta=run_meta, teacher=teacher,
                       callbacks=[*training_callbacks(tracker, rec, params), *(callbacks or [])])
    return _run(TRAINERS[task](overrides=args, sparse=sparse), save_dir, tracker)


def _start_tracker(uri, experiment, name, parent_run_id, rec, data, run_meta, run_id=None):
    from sparse_core.tracking import Tracker, disable_ultralytics_mlflow, lineage_tags

    disable_ultralytics_mlflow()
    tracker = Tracker.start(uri, experiment=experiment, run_name=name, run_id=run_id, parent_run_id=parent_run_id)
    if tracker.enabled:
        if not run_meta.get("data_hash") and data:
            from sparse_core.data.hashing import dataset_hash

            run_meta["data_hash"] = dataset_hash(data)
        tracker.set_tags(lineage_tags(recipe=rec, data_hash=run_meta.get("data_hash"), base=run_meta.get("base")))
        run_meta["mlflow_run_id"] = tracker.run_id
    return tracker


def _resume(ckpt_path: str, data: str | None, workers: int | None, callbacks: list | None,
            mlflow: str | None = None) -> dict:
    ckpt = load_checkpoint(ckpt_path)
    meta = sparsepipe_meta(ckpt)
    if "train_state" not in meta or ckpt.get("optimizer") is None:
        raise UserError(f"{ckpt_path}: not resumable (finished run or not a sparsepipe last.pt)")
    rec = None
    if meta.get("recipe"):
        from sparse_core.recipe import load_recipe

        rec = load_recipe(meta["recipe"], meta.get("recipe_args") or None)
    task = _model_task(ckpt_path, ckpt)
    overrides = {"resume": str(Path(ckpt_path).resolve()), "model": str(Path(ckpt_path).resolve())}
    if data:
        _check_data(data)
        overrides["data"] = str(Path(data).resolve())
    if workers is not None:
        overrides["workers"] = workers
    keep = {k: meta[k] for k in ("base", "data_hash", "mlflow_run_id", "teacher") if k in meta}
    tracker = _start_tracker(mlflow, "sparsepipe", None, None, rec, None, keep, run_id=keep.get("mlflow_run_id"))
    sparse = SparseRun(recipe=rec, seed=int(meta.get("seed", 0)), resume_meta=meta, meta=keep, teacher=keep.get("teacher"),
                       callbacks=[*training_callbacks(tracker, None, {}), *(callbacks or [])])
    trainer = TRAINERS[task](overrides=overrides, sparse=sparse)
    if not 0 < ckpt.get("epoch", -1) + 1 < trainer.epochs:
        raise UserError(f"{ckpt_path}: training already finished ({trainer.epochs} epochs), nothing to resume")
    return _run(trainer, Path(trainer.save_dir), tracker)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run(trainer, save_dir: Path, tracker) -> dict:
    """Train, summarise and record; the MLflow run ends FAILED if anything goes wrong."""
    try:
        summary = _train_and_summarise(trainer, save_dir)
        log_run_artifacts(tracker, trainer.sparse.recipe, save_dir, summary)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return summary


def _train_and_summarise(trainer, save_dir: Path) -> dict:
    """Train, then summarise best.pt (metrics, sparsity, plots) into summary.json."""
    from sparse_core.plots import plot_layer_sparsity, plot_sparsity_over_epochs

    t0 = time.time()
    try:
        trainer.train()
    except RuntimeError as err:
        if "Dataset" in str(err) and "error" in str(err):
            raise UserError(str(err).splitlines()[0]) from None
        raise
    weights = Path(trainer.best if trainer.best.exists() else trainer.last)
    ckpt = load_checkpoint(weights)
    model = checkpoint_model(ckpt)
    meta = sparsepipe_meta(ckpt)
    from sparse_core.sparsity import weight_sparsity

    overall, per_layer = weight_sparsity(model)
    metrics = {k: float(v) for k, v in (trainer.metrics or {}).items() if isinstance(v, (int, float))}
    summary = {
        "map50": metrics.get("metrics/mAP50(B)", 0.0),
        "map50_95": metrics.get("metrics/mAP50-95(B)", 0.0),
        "precision": metrics.get("metrics/precision(B)", 0.0),
        "recall": metrics.get("metrics/recall(B)", 0.0),
        "epochs": int(trainer.epochs),
        "sparsity": overall,
        "layer_sparsity": per_layer,
        "task": trainer.args.task,
        "imgsz": int(trainer.args.imgsz),
        "recipe_sha256": meta.get("recipe_sha256"),
        "mlflow_run_id": meta.get("mlflow_run_id"),
        "train_seconds": round(time.time() - t0, 2),
        "weights": {"best": str(trainer.best), "last": str(trainer.last)},
        "save_dir": str(save_dir),
    }
    if trainer.args.task == "segment":
        summary["mask_map50"] = metrics.get("metrics/mAP50(M)", 0.0)
        summary["mask_map50_95"] = metrics.get("metrics/mAP50-95(M)", 0.0)
    plot_layer_sparsity(per_layer, save_dir / "layer_sparsity.png")
    plot_sparsity_over_epochs(trainer.sparsity_history, save_dir / "sparsity_over_epochs.png")
    _write_json(save_dir / "summary.json", summary)
    return summary


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def val(weights: str, data: str | None = None, imgsz: int | None = None, batch: int = 16, plots: bool = False,
        device: str | None = None) -> dict:
    """Evaluate a checkpoint (.pt) or an exported model (.onnx / deployment folder) with Ultralytics' metrics."""
    offline.make_offline()
    path = Path(weights)
    openvino_ir = path.is_dir() and path.name.endswith("_openvino_model")  # written by sparse_core.onnx_val
    if path.is_dir() and not openvino_ir:
        path = path / "model.onnx"
    if not (path.is_file() or openvino_ir):
        raise UserError(f"{weights}: model not found")
    task = "detect"
    deploy_cfg = {}
    if path.suffix == ".pt":
        ckpt = load_checkpoint(path)
        task = _model_task(str(path), ckpt)
        imgsz = imgsz or sparsepipe_meta(ckpt).get("imgsz") or ckpt.get("train_args", {}).get("imgsz") or 640
        data = data or ckpt.get("train_args", {}).get("data")
    elif path.suffix == ".onnx" or openvino_ir:
        cfg_file = path / "data.yaml" if openvino_ir else path.parent / "data.yaml"
        if cfg_file.is_file():
            deploy_cfg = yaml.safe_load(cfg_file.read_text()) or {}
        task = deploy_cfg.get("task", task)
        imgsz = imgsz or deploy_cfg.get("imgsz") or 640
        batch = 1  # exported graphs have a static batch
    else:
        raise UserError(f"{weights}: expected a .pt checkpoint, a .onnx model or a deployment folder")
    if not data:
        raise UserError("val needs --data D.yaml")
    _check_data(data)
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.models.yolo.segment import SegmentationValidator

    validator_cls = SegmentationValidator if task == "segment" else DetectionValidator
    args = {"model": str(path), "data": str(data), "imgsz": int(imgsz), "batch": batch, "plots": plots,
            "task": task, "device": device or ("0" if _cuda() else "cpu"), "verbose": False, "half": False}
    with tempfile.TemporaryDirectory(prefix="sparsepipe-val-") as tmp:  # Ultralytics' validator wants a save_dir
        validator = validator_cls(args={**args, "save_dir": tmp})
        results = validator(model=str(path))
    metrics = {k: float(v) for k, v in results.items() if isinstance(v, (int, float))}
    out = {
        "map50": metrics.get("metrics/mAP50(B)", 0.0),
        "map50_95": metrics.get("metrics/mAP50-95(B)", 0.0),
        "precision": metrics.get("metrics/precision(B)", 0.0),
        "recall": metrics.get("metrics/recall(B)", 0.0),
        "task": task,
        "imgsz": int(imgsz),
        "weights": str(path),
    }
    if task == "segment":
        out["mask_map50"] = metrics.get("metrics/mAP50(M)", 0.0)
        out["mask_map50_95"] = metrics.get("metrics/mAP50-95(M)", 0.0)
    return out
