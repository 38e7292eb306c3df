"""``train`` and ``val``: validate inputs up front, run the Ultralytics trainer with a recipe, write summary.json.

Model sources: an Ultralytics model yaml (random init, e.g. ``yolov8n.yaml``, ``yolov5nu.yaml``,
``yolov3-tinyu.yaml``, ``yolov8n-seg.yaml``), a local ``.pt`` (Ultralytics' or ours) or a ``zoo:`` stub.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sparse_core.atomic import write_json
from sparse_core.checkpoint import checkpoint_model, load_checkpoint, sparsepipe_meta
from sparse_core.errors import UserError
from sparse_core.integrations.ultralytics import offline
from sparse_core.integrations.ultralytics.tracking import log_run_artifacts, standard_metrics, training_callbacks
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
    from sparse_core.data.labels import inside_root

    for key in ("train", "val"):
        for entry in cfg[key] if isinstance(cfg[key], list) else [cfg[key]]:
            target = inside_root(root, entry, f"{path}: field '{key}'")
            if not target.exists():
                raise UserError(f"{path}: field '{key}': {target} does not exist")
            if target.is_dir() and not _has_image(target):
                raise UserError(f"{path}: field '{key}': {target} holds no images (expected .jpg/.png/... files)")
    return cfg


def _has_image(folder: Path) -> bool:
    from sparse_core.data.labels import IMAGE_EXTS

    return any(p.suffix.lower() in IMAGE_EXTS for p in folder.rglob("*"))


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
        from sparse_core.sparseml_compat import resolve_sparseml

        model = str(resolve_sparseml(model))  # a SparseML checkpoint trains from our import of it
        return model, load_checkpoint(model)
    from ultralytics.nn.tasks import yaml_model_load

    try:
        spec = yaml_model_load(model)
    except (FileNotFoundError, OSError):
        raise UserError(f"--model {model}: model yaml not found (neither a file nor an Ultralytics model name)") from None
    except ValueError:  # Ultralytics' YAML loader: syntax errors and unknown tags such as a recipe's !Modifier
        spec = None
    if not (isinstance(spec, dict) and "backbone" in spec and "head" in spec):
        hint = " (this looks like a recipe: pass it as --recipe)" if _looks_like_recipe(model) else ""
        raise UserError(f"--model {model}: expected an Ultralytics model yaml with backbone: and head: "
                        f"sections, a .pt checkpoint or a zoo: stub{hint}")
    return model, None


def _looks_like_recipe(path: str) -> bool:
    """A recipe where a model yaml is expected: it names modifiers (``!...Modifier`` tags or a ``modifiers`` key)."""
    try:
        text = Path(path).read_text(errors="replace")[:100_000]
    except OSError:
        return False
    return "Modifier" in text or "modifiers:" in text


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``train`` takes besides model, data and recipe (the keyword arguments of ``train``)."""

    recipe_args: dict | str | None = None  # variable overrides (JSON text or a dict); not with a Recipe object
    epochs: int | None = None  # when the recipe does not set them (default 100)
    imgsz: int = 640
    batch: int = 16
    workers: int = 8
    gradient_accum_steps: int = 1
    project: str | os.PathLike = "runs/sparsepipe"
    name: str = "train"
    resume: str | None = None  # a sparsepipe last.pt to continue
    seed: int = 0
    zoo: str | None = None  # zoo URI for zoo: model / recipe / teacher stubs
    plots: bool = True
    device: str | None = None
    extra_args: dict[str, Any] | None = None  # more Ultralytics trainer overrides
    meta: dict | None = None  # stored in every checkpoint's sparsepipe metadata
    callbacks: list | None = None  # (event, fn) pairs
    mlflow: str | None = None  # tracking URI; None = $MLFLOW_TRACKING_URI
    experiment: str = "sparsepipe"
    parent_run_id: str | None = None
    teacher: str | None = None  # distillation: a checkpoint path, zoo: stub, 'self' or 'disable'
    track: bool = True  # False: open no MLflow run (a pipeline step records the training in its own run)


def train(model: str | None = None, data: str | None = None, recipe=None, **options) -> dict:
    """Train with an optional recipe (a path, ``zoo:`` stub or text, or an already loaded ``Recipe``); returns
    (and writes) the run summary. ``options``: the fields of ``TrainOptions``.

    With ``mlflow`` (or ``MLFLOW_TRACKING_URI``) set and ``track`` on, the run is recorded in MLflow and its id
    stored in every checkpoint, so export/register later log into the same run.
    """
    opts = TrainOptions(**options)
    offline.make_offline()
    if opts.resume:
        return _resume(opts.resume, data=data, workers=opts.workers, callbacks=opts.callbacks,
                       mlflow=opts.mlflow if opts.track else False)
    _check_options(model, data, opts)
    _check_data(data)
    base = model
    model, ckpt = _resolve_model(model, opts.zoo)
    if ckpt is not None and sparsepipe_meta(ckpt).get("quantized"):
        # Ultralytics rebuilds the float model from its yaml and copies matching weights: BN (moved into the QAT
        # ConvBn2d) and the quantization grid would be silently lost
        raise UserError(f"--model {model}: is a quantized (QAT) checkpoint; start new training from the float "
                        "checkpoint before QAT, or continue this run with --resume")
    task = _model_task(model, ckpt)
    rec = _recipe(recipe, opts)
    from sparse_core.distillation import resolve_spec

    teacher = resolve_spec(opts.teacher, opts.zoo)
    run_meta = {"base": base, **(opts.meta or {}), **({"teacher": teacher} if teacher else {})}
    if ckpt is not None and sparsepipe_meta(ckpt).get("sparseml_source"):  # lineage of an imported SparseML model
        run_meta["sparseml_source"] = sparsepipe_meta(ckpt)["sparseml_source"]
    tracker = _start_tracker(opts.mlflow if opts.track else False, opts.experiment, opts.name, opts.parent_run_id,
                             rec, data, run_meta)
    params = {"base": base, "data_hash": run_meta.get("data_hash"), "recipe_args": rec.args if rec else None,
              "gradient_accum_steps": opts.gradient_accum_steps}
    sparse = SparseRun(recipe=rec, seed=opts.seed, meta=run_meta, teacher=teacher,
                       callbacks=[*training_callbacks(tracker, rec, params), *(opts.callbacks or [])])
    save_dir = (Path(opts.project) / opts.name).resolve()
    fresh = not save_dir.exists()
    args = _trainer_args(model, data, task, rec, save_dir, opts)
    return _run(TRAINERS[task](overrides=args, sparse=sparse), save_dir, tracker, remove_on_failure=fresh)


def _check_options(model, data, opts: TrainOptions) -> None:
    if model is None or data is None:
        raise UserError("train needs --model and --data (or --resume CKPT)")
    if opts.batch is None or opts.batch < 1:
        raise UserError(f"--batch {opts.batch}: expected a positive integer")
    if opts.epochs is not None and opts.epochs < 1:
        raise UserError(f"--epochs {opts.epochs}: expected a positive integer")
    if opts.gradient_accum_steps < 1:
        raise UserError(f"--gradient-accum-steps {opts.gradient_accum_steps}: expected a positive integer")
    if opts.imgsz < 32:
        raise UserError(f"--imgsz {opts.imgsz}: expected at least 32")


def _recipe(recipe, opts: TrainOptions):
    """The Recipe to train with: the one given (parsed once by the caller), else loaded from its source."""
    from sparse_core.recipe import Recipe, load_recipe

    if isinstance(recipe, Recipe):
        if opts.recipe_args:
            raise UserError("recipe_args given with an already loaded recipe; expected them applied when loading it")
        return recipe
    return load_recipe(recipe, opts.recipe_args, zoo=opts.zoo) if recipe else None


def _trainer_args(model: str, data: str, task: str, rec, save_dir: Path, opts: TrainOptions) -> dict:
    """Ultralytics trainer overrides."""
    recipe_epochs = rec.num_epochs() if rec is not None else None
    args = {
        "model": model,
        "data": str(Path(data).resolve()),
        "task": task,
        "epochs": math.ceil(recipe_epochs) if recipe_epochs else (opts.epochs or 100),
        "imgsz": opts.imgsz,
        "batch": opts.batch,
        "workers": opts.workers,
        "nbs": opts.batch * opts.gradient_accum_steps,  # Ultralytics accumulates round(nbs / batch) batches a step
        "save_dir": str(save_dir),
        "exist_ok": True,
        "seed": opts.seed,
        "deterministic": True,
        "plots": opts.plots,
        "device": opts.device or ("0" if _cuda() else "cpu"),
        "verbose": False,
    }
    if rec is not None and rec.of_type(*LR_MODIFIERS):
        # The recipe owns the learning rate: plain SGD, no Ultralytics warmup fighting its schedule.
        args.update(optimizer="SGD", warmup_epochs=0)
    args.update(opts.extra_args or {})
    return args


def _start_tracker(uri, experiment, name, parent_run_id, rec, data, run_meta, run_id=None):
    from sparse_core.tracking import Tracker, disable_ultralytics_mlflow, lineage_tags

    disable_ultralytics_mlflow()
    if uri is False:  # tracking off: the caller records the run (and $MLFLOW_TRACKING_URI must not reopen one)
        return Tracker()
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
    keep = {k: meta[k] for k in ("base", "data_hash", "mlflow_run_id", "teacher", "sparseml_source") if k in meta}
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


def _run(trainer, save_dir: Path, tracker, remove_on_failure: bool = False) -> dict:
    """Train, summarise and record; the MLflow run ends FAILED if anything goes wrong.

    A new run that fails before its first ``last.pt`` leaves nothing behind (``remove_on_failure``); one with a
    ``last.pt`` is kept so ``--resume`` can continue it."""
    try:
        summary = _train_and_summarise(trainer, save_dir)
        log_run_artifacts(tracker, trainer.sparse.recipe, save_dir, summary)
    except BaseException:
        tracker.finish("FAILED")
        if remove_on_failure and not (save_dir / "weights" / "last.pt").exists():
            shutil.rmtree(save_dir, ignore_errors=True)
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
        if ("Dataset" in str(err) and "error" in str(err)) or "No valid images found" in str(err):
            raise UserError(f"{trainer.args.data}: {str(err).splitlines()[0]}") from None
        raise
    weights = Path(trainer.best if trainer.best.exists() else trainer.last)
    ckpt = load_checkpoint(weights)
    model = checkpoint_model(ckpt)
    meta = sparsepipe_meta(ckpt)
    from sparse_core.sparsity import weight_sparsity

    overall, per_layer = weight_sparsity(model)
    summary = {
        **standard_metrics(trainer.metrics or {}, trainer.args.task),
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
    plot_layer_sparsity(per_layer, save_dir / "layer_sparsity.png")
    plot_sparsity_over_epochs(trainer.sparsity_history, save_dir / "sparsity_over_epochs.png")
    write_json(save_dir / "summary.json", summary)
    return summary


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
        from sparse_core.sparseml_compat import resolve_sparseml

        path = resolve_sparseml(path)  # a SparseML checkpoint is validated through our import of it
        ckpt = load_checkpoint(path)
        task = _model_task(str(path), ckpt)
        imgsz = imgsz or sparsepipe_meta(ckpt).get("imgsz") or ckpt.get("train_args", {}).get("imgsz") or 640
        data = data or ckpt.get("train_args", {}).get("data")
    elif path.suffix == ".onnx" or openvino_ir:
        cfg_file = path / "data.yaml" if openvino_ir else path.parent / "data.yaml"
        if cfg_file.is_file():
            deploy_cfg = yaml.safe_load(cfg_file.read_text()) or {}
        if not openvino_ir:  # a file onnxruntime cannot parse is bad input: say so before Ultralytics logs anything
            from sparse_core.export.graph import load_onnx

            load_onnx(path)
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
    return {**standard_metrics(results, task), "task": task, "imgsz": int(imgsz), "weights": str(path)}
