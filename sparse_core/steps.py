"""Pipeline steps as plain Python: one function per KFP component, paths/strings/numbers in, a dict out.

The components in ``components/<step>/component.py`` are thin: they import this module and call one function, so a
step runs (and is tested) the same from a shell, a test, the local runner or a pod. Every step:

- runs in an MLflow **child run** under ``ctx.parent_run_id`` (``sparse_core.tracking.step_run``): params, metrics,
  small artifacts and lineage tags; FAILED with tag ``sparsepipe.error`` = the one-line cause when it raises;
- caches its output by content (``sparse_core.step_cache``): a hit copies the stored output, tags the child run
  ``sparsepipe.cache=hit`` and re-logs the stored metrics, so every pipeline run still has one child run per step.

Settings come in small typed objects: ``StepContext`` (tracking and cache, the same for every step),
``TrainSettings`` and ``RecipeSettings`` (the training steps). Outputs name their files relative to the output
folder, never by absolute path, so a cached result stays true.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from sparse_core import progress, step_work
from sparse_core.atomic import write_json
from sparse_core.errors import UserError
from sparse_core.integrations.ultralytics.stage import StageInputs, TrainSettings
from sparse_core.step_cache import cached, link_or_copy
from sparse_core.step_inputs import as_bool, model_source, nothing_fetched, read_json, training_summary
from sparse_core.tracking.lineage import file_sha256
from sparse_core.tracking.record import bench_metrics, bench_params, engine_accuracy
from sparse_core.tracking.step_run import (  # noqa: F401  (re-exported: components and the pipeline CLI use them)
    ERRORS_ENV,
    TAG_CACHE,
    TAG_CACHE_KEY,
    TAG_ERROR,
    TAG_KIND,
    TAG_PIPELINE,
    TAG_STEP,
    StepContext,
    close_parent_run,
    failed_step_cause,
    input_id,
    log_outcome,
    one_line,
    open_parent_run,
    step_lineage,
    step_run,
)

__all__ = ["RecipeSettings", "StepContext", "TrainSettings", "benchmark", "bench_metrics", "close_parent_run",
           "export_model", "fetch_checkpoint", "open_parent_run", "prepare_dataset", "qat", "register_model",
           "select_champion", "sparse_train"]
TRAIN_METRICS = ("map50", "map50_95", "sparsity", "train_seconds")


@dataclass(frozen=True)
class RecipeSettings:
    """The recipe a sparse_train step applies."""

    recipe: str = ""  # path, zoo: stub or recipe text; '' = dense fine-tuning
    recipe_args: str = ""  # JSON object overriding recipe variables
    zoo: str = ""  # zoo URI for zoo: stubs
    sparsity_target: float = -1.0  # >= 0: sets variable ``sparsity_arg`` (the sweep's knob)
    sparsity_arg: str = "final_sparsity"
    max_map_drop: float = -1.0  # >= 0: accuracy budget in mAP50-95 points against the start model (backs off)

    def params(self) -> dict:
        shown = self.recipe if len(self.recipe) < 500 else f"<{len(self.recipe)} chars of recipe text>"
        target, budget = float(self.sparsity_target), float(self.max_map_drop)
        return {"recipe": shown, "recipe_args": self.recipe_args, "sparsity_target": target if target >= 0 else None,
                "max_map_drop": budget if budget >= 0 else None}

    def load(self):
        """The resolved recipe (parsed once for the step), or None without one."""
        from sparse_core.recipe import load_recipe, parse_recipe_args

        target = float(self.sparsity_target)
        if not self.recipe:
            if self.recipe_args or target >= 0:
                raise UserError("recipe_args/sparsity_target given without a recipe; expected a recipe to apply "
                                "them to")
            return None
        args = parse_recipe_args(self.recipe_args)
        if target >= 0:
            args[self.sparsity_arg] = target
        return load_recipe(self.recipe, args, zoo=self.zoo or None, staged=True)  # split into sparse / qat


# ---------------------------------------------------------------------------------------------------- inputs


def fetch_checkpoint(model: str, out: str, zoo: str = "", ctx: StepContext = StepContext()) -> dict:
    """Resolve ``model`` (zoo stub, ``.pt`` path, ``s3://`` URI, or an Ultralytics model yaml name) into ``out``.

    ``out/fetch.json`` says what downstream steps train from: ``model`` is a file in ``out`` (``model.pt`` or the
    yaml) or an Ultralytics model name (random init); ``''`` for an empty ``model`` (an optional teacher).
    """
    step = ctx.named("fetch_checkpoint")
    with step_run(step, {"model": model, "zoo": zoo}, ctx) as tracker:
        out_dir = Path(out)
        if not model:
            out_dir.mkdir(parents=True, exist_ok=True)
            result = {"model": "", "source": "", "sha256": "", "kind": "none"}
            write_json(out_dir / "fetch.json", result)
            log_outcome(tracker, False, "", tags={"sparsepipe.fetch": "none"})
            return result
        from sparse_core.zoo.entry import resolve_source

        source = resolve_source(model, zoo)
        if source is not None and source.suffix == ".pt":
            from sparse_core.safe_load import check_safe

            check_safe(source, f"model {model}")  # pipelines never fully unpickle a checkpoint
        parts = {"source": model, "sha256": file_sha256(source) if source else model}

        def compute(o: Path) -> dict:
            if source is None:  # an Ultralytics model name such as yolov8n.yaml: random init downstream
                res = {"model": model, "source": model, "sha256": "", "kind": "yaml"}
            else:
                name = "model.pt" if source.suffix == ".pt" else source.name
                link_or_copy(source, o / name)
                res = {"model": name, "source": model, "sha256": parts["sha256"],
                       "kind": "checkpoint" if name == "model.pt" else "yaml"}
            write_json(o / "fetch.json", res)
            return res

        result, hit, key = cached(step, parts, out_dir, compute, ctx.cache_dir)
        log_outcome(tracker, hit, key, tags=step_lineage(tracker, base=model))
        return result


def prepare_dataset(data: str, out: str, data_format: str = "yolo", task: str = "detect", val_fraction: float = 0.2,
                    classes: str = "", ctx: StepContext = StepContext()) -> dict:
    """Validate ``data`` (path or ``s3://`` prefix) in ``data_format`` and write an Ultralytics data set at ``out``.

    Cache key: the source's content (file hashes, or S3 ETags), format, task, split fraction and class names.
    Returns the prepare stats (``content_hash``, ``images``, ``instances``, ``per_class`` ...).
    """
    step = ctx.named("prepare_dataset")
    params = {"data": data, "data_format": data_format, "task": task, "val_fraction": val_fraction,
              "classes": classes}
    with step_run(step, params, ctx) as tracker:
        from sparse_core.data.fingerprint import rebase_data_yaml, source_fingerprint

        class_list = [c.strip() for c in classes.split(",") if c.strip()] or None
        parts = {"source": source_fingerprint(data, data_format), "format": data_format, "task": task,
                 "val_fraction": float(val_fraction), "classes": class_list}
        out_dir = Path(out)

        def compute(o: Path) -> dict:
            from sparse_core.data.prepare import prepare_source

            return prepare_source(data, data_format, o, task, float(val_fraction), class_list)

        result, hit, key = cached(step, parts, out_dir, compute, ctx.cache_dir)
        if hit:
            rebase_data_yaml(out_dir)
        metrics = {"images_train": result["images"].get("train", 0), "images_val": result["images"].get("val", 0),
                   "instances": result.get("instances", 0)}
        log_outcome(tracker, hit, key, metrics=metrics, tags=step_lineage(tracker, data_hash=result["content_hash"]),
                    artifacts=[out_dir / "stats.json", out_dir / "data.yaml"])
        return result


# ---------------------------------------------------------------------------------------------------- training


def sparse_train(checkpoint: str, dataset: str, out: str, recipe: RecipeSettings = RecipeSettings(),
                 train: TrainSettings = TrainSettings(), ctx: StepContext = StepContext()) -> dict:
    """Train the recipe's pruning/LR stage (``Recipe.split('sparse')``) from ``checkpoint`` on ``dataset``.

    ``out`` gets ``model.pt``, ``summary.json``, ``recipe.yaml`` (this stage) and ``recipe.full.yaml`` (the whole
    resolved recipe, which ``qat`` splits, so both stages see the same arguments). No recipe: plain (dense)
    fine-tuning for ``train.epochs``.
    """
    step = ctx.named("sparse_train")
    params = {**recipe.params(), "epochs": train.epochs, "imgsz": train.imgsz, "batch": train.batch,
              "seed": train.seed, "teacher": bool(train.teacher), "device": train.device}
    target = float(recipe.sparsity_target)
    with step_run(step, params, ctx, run_name=f"{step}@{target:g}" if target >= 0 else step,
                  inputs=input_id(checkpoint, "fetch.json", "model.pt")) as tracker:
        full = recipe.load()
        if full is not None:
            tracker.log_params(full.summary())
            tracker.log_text(full.original_text, "recipe.original.yaml")
        model, model_sha, base = model_source(checkpoint)
        if full is None or float(recipe.max_map_drop) < 0:
            result = _train_stage(step, model, model_sha, base, dataset, full.split("sparse") if full else None,
                                  full.to_yaml() if full is not None else None, Path(out), train, tracker, ctx)
        else:
            result = _budgeted(step, recipe, (model, model_sha, base), dataset, Path(out), train, tracker, ctx)
        from sparse_core.sensitivity.generate import provenance

        _carry(Path(out), {"budget": result.get("budget"),
                           "recipe_provenance": provenance(full.original_text) if full is not None else {}})
        return result


def _carry(out: Path, facts: dict) -> None:
    """Add ``facts`` (lineage the registration needs: the accuracy budget, a generated recipe's provenance) to the
    step output's summary.json, so later steps carry them to the deployment folder; empty facts are left out."""
    facts = {k: v for k, v in facts.items() if v}
    if facts:
        write_json(out / "summary.json", {**training_summary(out), **facts})


def _budgeted(step: str, recipe: RecipeSettings, source: tuple, dataset: str, out: Path, train: TrainSettings,
              tracker, ctx: StepContext) -> dict:
    """sparse_train under ``recipe.max_map_drop`` (``budget.recipe_within_budget``): each attempt is one
    ``_train_stage`` of the recipe with its sparsity scaled down, trained beside ``out``."""
    from sparse_core.data.fingerprint import prepared_info
    from sparse_core.integrations.ultralytics import budget

    model, model_sha, base = source

    def run_stage(full, folder: Path) -> dict:
        return _train_stage(step, model, model_sha, base, dataset, full.split("sparse"), full.to_yaml(), folder,
                            train, tracker, ctx)

    return budget.recipe_within_budget(recipe, model, prepared_info(dataset)[0], train.imgsz, out, run_stage,
                                       tracker)


def qat(model: str, dataset: str, out: str, train: TrainSettings = TrainSettings(),
        ctx: StepContext = StepContext()) -> dict:
    """Quantization-aware stage: ``Recipe.split('qat')`` of ``model/recipe.full.yaml``, trained from
    ``model/model.pt`` with the pruning masks held (ConstantPruningModifier over the pruned layers).

    A recipe without QuantizationModifier has no QAT stage: the input passes through unchanged (hard links), and
    the child run is tagged ``sparsepipe.qat=skipped``.
    """
    step = ctx.named("qat")
    params = {"epochs": train.epochs, "imgsz": train.imgsz, "batch": train.batch, "seed": train.seed,
              "device": train.device}
    with step_run(step, params, ctx, inputs=input_id(model, "model.pt")) as tracker:
        from sparse_core.recipe import load_recipe

        src, out_dir = Path(model), Path(out)
        summary = read_json(src / "summary.json", "training summary")
        full_yaml = src / "recipe.full.yaml"
        full = load_recipe(str(full_yaml), staged=True) if full_yaml.is_file() else None
        if full is None or not full.of_type("QuantizationModifier"):
            out_dir.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                if f.is_file():
                    link_or_copy(f, out_dir / f.name)
            log_outcome(tracker, False, "", metrics={k: summary[k] for k in ("map50", "map50_95", "sparsity")
                                                     if k in summary}, tags={"sparsepipe.qat": "skipped"})
            return {**summary, "qat": "skipped"}
        part = full.split("qat").rebased(full.qat_start_epoch() or 0.0)
        weights = src / "model.pt"
        result = _train_stage(step, str(weights), file_sha256(weights), summary.get("base", ""), dataset, part,
                              full_yaml.read_text(), out_dir, train, tracker, ctx)
        _carry(out_dir, {k: summary.get(k) for k in ("budget", "recipe_provenance")})
        tracker.set_tags({"sparsepipe.qat": "trained"})
        return {**result, "qat": "trained"}


def _train_stage(step: str, model: str, model_sha: str, base: str, dataset: str, stage, full_yaml: str | None,
                 out_dir: Path, train: TrainSettings, tracker, ctx: StepContext) -> dict:
    """Train one stage (shared by sparse_train and qat) through the cache, in the step's own MLflow run."""
    from sparse_core.data.fingerprint import prepared_info
    from sparse_core.integrations.ultralytics.stage import train_stage

    data_yaml, data_hash = prepared_info(dataset)
    stage_yaml = stage.to_yaml() if stage is not None else None
    teacher_model, teacher_sha = ("", "")
    if train.teacher and not nothing_fetched(train.teacher):
        teacher_model, teacher_sha, _ = model_source(train.teacher)
    parts = {"model": model_sha, "data": data_hash, "recipe": stage_yaml, "epochs": int(train.epochs),
             "imgsz": int(train.imgsz), "batch": int(train.batch), "seed": int(train.seed), "teacher": teacher_sha,
             "device": train.device or "auto"}
    inputs = StageInputs(model, data_yaml, data_hash, base, teacher_model)
    settings = replace(train, plots=as_bool(train.plots))
    work = step_work.work_dir(step, parts, ctx.cache_dir)  # survives the pod: a retry resumes from it

    def compute(o: Path) -> dict:
        if stage_yaml is not None:
            (o / "recipe.yaml").write_text(stage_yaml)  # the record of what ran; training uses ``stage`` itself
        if full_yaml is not None:
            (o / "recipe.full.yaml").write_text(full_yaml)
        return train_stage(o, inputs, stage, settings, tracker.run_id, work)

    result, hit, key = cached(step, parts, out_dir, compute, ctx.cache_dir)
    step_work.done(work)
    tags = step_lineage(tracker, recipe=stage_yaml, data_hash=data_hash, base=base)
    if full_yaml is not None:
        tags["recipe_full_sha256"] = result.get("recipe_full_sha256", "")
    log_outcome(tracker, hit, key, metrics={k: result[k] for k in TRAIN_METRICS if k in result}, tags=tags,
                history=result.get("history"), artifacts=[out_dir / n for n in (
                    "summary.json", "recipe.yaml", "recipe.full.yaml", "layer_sparsity.png", "results.csv")])
    return result


# ---------------------------------------------------------------------------------------------------- deployment


def export_model(model: str, out: str, imgsz: int = 0, batch: int = 1, opset: int = 17,
                 ctx: StepContext = StepContext()) -> dict:
    """ONNX deployment folder (``model.onnx``, ``recipe.yaml``, ``data.yaml``, ``export.json``, plus ``model.pt``
    and ``summary.json`` of the training) from ``model/model.pt``; ``imgsz`` 0 = the training image size."""
    step = ctx.named("export_model")
    with step_run(step, {"imgsz": imgsz, "batch": batch, "opset": opset}, ctx,
                  inputs=input_id(model, "model.pt")) as tracker:
        from sparse_core.tracking.keys import TAG_ONNX_SHA256

        src, out_dir = Path(model), Path(out)
        weights = src / "model.pt"
        if not weights.is_file():
            raise UserError(f"{src}: no model.pt; expected a training step output")
        summary = training_summary(src)
        parts = {"weights": file_sha256(weights), "imgsz": int(imgsz), "batch": int(batch), "opset": int(opset)}

        def compute(o: Path) -> dict:
            from sparse_core.export import export_model as export

            progress.emit(event="export_start")  # a kill point of the fault tests: the folder is written to a temp
            if o.exists() and not any(o.iterdir()):
                o.rmdir()
            info = export(str(weights), o, imgsz=int(imgsz) or None, batch=int(batch), opset=int(opset))
            link_or_copy(weights, o / "model.pt")
            if (src / "summary.json").is_file():
                link_or_copy(src / "summary.json", o / "summary.json")
            return {k: v for k, v in info.items() if k != "source"}

        result, hit, key = cached(step, parts, out_dir, compute, ctx.cache_dir)
        tags = {**_deploy_lineage(tracker, out_dir, summary), TAG_ONNX_SHA256: result.get("sha256", "")}
        metrics = {"size_mb": result.get("size_bytes", 0) / 1e6, "size_gzip_mb": result.get("size_gzip_bytes", 0) / 1e6,
                   "onnx_sparsity": result.get("sparsity", 0.0),
                   "parity_max_abs_diff": result.get("parity_max_abs_diff", 0.0)}
        log_outcome(tracker, hit, key, metrics=metrics, tags=tags,
                    artifacts=[out_dir / "export.json", out_dir / "recipe.yaml", out_dir / "data.yaml"])
        return result


def _deploy_lineage(tracker, deploy: Path, summary: dict) -> dict:
    """Lineage tags of a registered model: recipe, data, base, and where the recipe came from (a generated
    recipe's analysis and prediction) and the accuracy budget it was trained under."""
    from sparse_core.integrations.ultralytics.budget import budget_tags

    recipe = deploy / "recipe.yaml"
    tags = step_lineage(tracker, recipe=recipe.read_text() if recipe.is_file() else None,
                        data_hash=summary.get("data_hash"), base=summary.get("base"))
    provenance = summary.get("recipe_provenance")
    tags.update({str(k): str(v) for k, v in provenance.items()} if isinstance(provenance, dict) else {})
    tags.update(budget_tags(summary))
    tags.update(chosen_tags(deploy))  # form, engine, precision, ISA of a deployment chosen by measurement
    return tags


def benchmark(model: str, out: str, engine: str = "onnxruntime", threads: int = 0, seconds: float = 0.0,
              iterations: int = 50, warmup: int = 5, ctx: StepContext = StepContext(), precision: str = "",
              isa: str = "") -> dict:
    """Throughput/latency/size of the deployment folder ``model`` (``sparse_core.bench``); ``out`` is a JSON file.
    ``isa`` (OpenVINO): cap oneDNN's instruction set (``sparse_core.bench.openvino_isa``).

    Cached per (model.onnx sha256, engine, threads, run length, CPU model): a speed measured on another CPU is not
    reused.
    """
    step = ctx.named("benchmark")
    params = {"engine": engine, "threads": threads, "seconds": seconds, "iterations": iterations, "warmup": warmup,
              "precision": precision or "default", **({"isa": isa} if isa else {})}
    with step_run(step, params, ctx, inputs=input_id(model, "model.onnx")) as tracker:
        from sparse_core.bench import benchmark as bench
        from sparse_core.bench.cpu import cpu_info

        deploy = Path(model)
        onnx_path = deploy / "model.onnx"
        if not onnx_path.is_file():
            raise UserError(f"{deploy}: no model.onnx; expected the export_model output")
        threads_n = int(threads) or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                     else os.cpu_count() or 1)
        cpu = cpu_info()
        parts = {"onnx": file_sha256(onnx_path), "engine": engine, "precision": precision, "threads": threads_n,
                 **({"isa": isa.upper()} if isa else {}),
                 "seconds": float(seconds),
                 "iterations": int(iterations), "warmup": int(warmup),
                 "cpu": {k: cpu.get(k) for k in ("model", "isa", "flags", "available_cpus")}}
        out_path = Path(out)

        def compute(o: Path) -> dict:
            res = bench(str(deploy), engine=engine, threads=threads_n, warmup=int(warmup),
                        iterations=int(iterations) if not float(seconds) else None,
                        seconds=float(seconds) or None, precision=precision or None, isa=isa or None)
            res["model"] = "model.onnx"
            write_json(o / "benchmark.json", res)
            return res

        scratch = out_path.parent / f".{out_path.name}.d"
        result, hit, key = cached(step, parts, scratch, compute, ctx.cache_dir)
        write_json(out_path, result)
        shutil.rmtree(scratch, ignore_errors=True)
        tracker.log_params(bench_params(result))
        log_outcome(tracker, hit, key, metrics=bench_metrics(result), artifacts=[out_path])
        return result


def register_model(model: str, benchmark: str, name: str, alias: str = "candidate", tags: str = "",
                   ctx: StepContext = StepContext()) -> dict:
    """Register the deployment folder ``model`` as a version of ``name`` in this step's child run.

    The child run carries the metrics a champion is picked by (map50, sparsity from training; images_per_s,
    latency, size from ``benchmark``), so ``promote_champion`` compares versions on one run each. Idempotent: a
    version of ``name`` with the same ``onnx_sha256`` and recipe is reused (its alias moved), not duplicated.
    ``tags`` (JSON object) are added to the version (e.g. ``{"baseline": "dense"}``).
    """
    extra = json.loads(tags) if tags else {}
    if not isinstance(extra, dict):
        raise UserError(f"tags: {tags!r}; expected a JSON object")
    params = {"name": name, "alias": alias, **{f"tag.{k}": v for k, v in extra.items()}}
    with step_run(ctx.named("register_model"), params, ctx, inputs=input_id(model, "model.onnx")) as tracker:
        from sparse_core.tracking import registry
        from sparse_core.tracking.keys import TAG_ONNX_SHA256

        if not tracker.enabled:
            raise UserError("register_model: no MLflow tracking URI; set the mlflow_uri parameter or "
                            "MLFLOW_TRACKING_URI")
        deploy = Path(model)
        summary = training_summary(deploy)
        metrics = {k: summary[k] for k in ("map50", "map50_95", "mask_map50", "mask_map50_95", "sparsity")
                   if isinstance(summary.get(k), (int, float))}
        tracker.log_metrics({**metrics, **bench_metrics(read_json(Path(benchmark), "benchmark result")),
                             **engine_accuracy(deploy)})
        lineage = _deploy_lineage(tracker, deploy, summary)
        tracker.set_tags({**lineage, **{str(k): str(v) for k, v in extra.items()}})
        tracker.flush(timeout=60)
        result = registry.register_or_reuse(deploy, name, tracker.run_id, alias or None, tracker.uri, lineage, extra,
                                            step_key=tracker.step_key)
        tracker.set_tags({"sparsepipe.registered": f"{name}/{result['version']}",
                          TAG_CACHE: "hit" if result["reused"] else "miss", TAG_ONNX_SHA256: result["onnx_sha256"]})
        return result


def select_champion(name: str, metric: str = "images_per_s", constraint: str = "map50>=0.9*dense",
                    higher_is_better: bool = True, ctx: StepContext = StepContext(),
                    max_map_drop: float = -1.0) -> dict:
    """Move alias ``champion`` of ``name`` to the best version by ``metric`` among those meeting ``constraint``
    and, when ``max_map_drop`` >= 0, losing at most that many mAP50-95 points against the dense model
    (``sparse_core.tracking.registry.promote_champion``)."""
    from sparse_core.tracking import registry

    if float(max_map_drop) >= 0:
        budget = registry.map_drop_constraint(float(max_map_drop))
        constraint = f"{constraint}, {budget}" if constraint else budget
    params = {"name": name, "metric": metric, "constraint": constraint, "higher_is_better": higher_is_better,
              "max_map_drop": max_map_drop}
    with step_run(ctx.named("select_champion"), params, ctx) as tracker:
        if not tracker.enabled:
            raise UserError("select_champion: no MLflow tracking URI; set mlflow_uri or MLFLOW_TRACKING_URI")
        result = registry.promote_champion(name, metric, higher_is_better=as_bool(higher_is_better),
                                           constraint=constraint or None, tracking_uri=tracker.uri)
        tracker.set_tags({"sparsepipe.champion": f"{name}/{result['version']}"})
        tracker.log_metrics({f"champion_{metric}": result["value"]})
        return result


# auto_sparsify's steps live with the sensitivity analysis; re-exported so components call sparse_core.steps only
from sparse_core.sensitivity.steps import analyze, generate_recipe  # noqa: E402,F401
# the deployment choice's steps (probe before QAT, choose after export) live with export
from sparse_core.export.steps import choose_deployment, chosen_tags, decide_precision  # noqa: E402,F401
