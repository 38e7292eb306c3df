"""Pipeline steps as plain Python: one function per KFP component, paths/strings/numbers in, a dict out.

The components in ``components/<step>/component.py`` are thin: they import this module and call one function, so a
step runs (and is tested) the same from a shell, a test, the local runner or a pod. Every step:

- opens an MLflow **child run** under ``parent_run_id`` (a string parameter; the parent is opened by
  ``open_parent_run`` or by ``sparsepipe pipeline run --local``), logs its params, metrics, small artifacts and
  lineage tags, and marks the run FAILED (tag ``sparsepipe.error`` = the one-line cause) when it raises;
- caches its output by content (``sparse_core.step_cache``): a hit copies the stored output, tags the child run
  ``sparsepipe.cache=hit`` and re-logs the stored metrics, so every pipeline run still has one child run per step;
- writes the one-line cause of a failure to ``$SPARSEPIPE_STEP_ERRORS/<ns>-<step>.json`` when that variable is set
  (the local runner's logs bury it; ``pipeline run --local`` reads it back).

Outputs name their files relative to the output folder, never by absolute path, so a cached result stays true.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from sparse_core.errors import UserError
from sparse_core.tracking.record import bench_metrics, engine_accuracy

ERRORS_ENV = "SPARSEPIPE_STEP_ERRORS"
TAG_STEP = "sparsepipe.step"
TAG_CACHE = "sparsepipe.cache"
TAG_CACHE_KEY = "sparsepipe.cache_key"
TAG_ERROR = "sparsepipe.error"
TAG_PIPELINE = "sparsepipe.pipeline"
TAG_KIND = "sparsepipe.run_kind"  # 'pipeline' on parent runs, 'step' on child runs
STANDARD_METRICS = {  # Ultralytics name -> the standard key of sparse_core.tracking.keys
    "metrics/mAP50(B)": "map50", "metrics/mAP50-95(B)": "map50_95",
    "metrics/mAP50(M)": "mask_map50", "metrics/mAP50-95(M)": "mask_map50_95",
    "metrics/precision(B)": "precision", "metrics/recall(B)": "recall",
}


# ---------------------------------------------------------------------------------------------------- helpers


def one_line(err: BaseException) -> str:
    """The cause a user needs: a UserError's own line, else ``Type: first line``."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, UserError):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _record_error(step: str, cause: str, user: bool) -> None:
    folder = os.environ.get(ERRORS_ENV)
    if not folder:
        return
    path = Path(folder) / f"{time.time_ns()}-{step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": step, "error": cause, "user": user}))
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: missing; expected the {what} written by the previous step")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _sha256(path: Path) -> str:
    from sparse_core.tracking.lineage import file_sha256

    return file_sha256(path)


def _tree_fingerprint(src: Path) -> str:
    """sha256 over (relative path, size, sha256) of every file under ``src`` (or of ``src`` itself)."""
    import hashlib

    h = hashlib.sha256()
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    for f in files:
        rel = f.name if f == src else f.relative_to(src).as_posix()
        h.update(f"{rel}\0{f.stat().st_size}\0{_sha256(f)}\n".encode())
    return h.hexdigest()


def _bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


# ---------------------------------------------------------------------------------------------------- tracking


@contextlib.contextmanager
def step_run(step: str, params: dict, mlflow_uri: str = "", experiment: str = "sparsepipe",
             parent_run_id: str = "", run_name: str | None = None) -> Iterator[Any]:
    """A child MLflow run for one step (a no-op tracker without a URI); FAILED + cause tag when the body raises."""
    tracker = None
    try:
        from sparse_core.tracking import Tracker

        tracker = Tracker.start(mlflow_uri or None, experiment=experiment or "sparsepipe", run_name=run_name or step,
                                parent_run_id=parent_run_id or None, tags={TAG_STEP: step, TAG_KIND: "step"})
        if tracker.enabled and parent_run_id:
            _inherit_parent_tags(tracker, parent_run_id)
        tracker.log_params({k: v for k, v in params.items() if v not in (None, "")})
        t0 = time.perf_counter()
        yield tracker
        tracker.log_metrics({"step_seconds": time.perf_counter() - t0})
        tracker.finish("FINISHED")
    except BaseException as err:
        cause = one_line(err)
        _record_error(step, cause, isinstance(err, UserError))
        if tracker is not None:
            tracker.set_tags({TAG_ERROR: cause[:500]})
            tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise


def _inherit_parent_tags(tracker, parent_run_id: str) -> None:
    """Copy the parent's pipeline identity onto the child (and into lineage, via the environment)."""
    from sparse_core.tracking import keys
    from sparse_core.tracking.connection import http_limits

    try:
        with http_limits(retries=1, timeout=10):
            tags = tracker.client.get_run(parent_run_id).data.tags
    except Exception:  # noqa: BLE001 - lineage is best effort; the child run itself is already linked
        return
    inherit = {k: v for k, v in tags.items() if k in (keys.TAG_PIPELINE_RUN_ID, TAG_PIPELINE)}
    tracker.set_tags(inherit)
    tracker.pipeline_run_id = inherit.get(keys.TAG_PIPELINE_RUN_ID)  # read by _lineage


def _lineage(tracker, **kwargs) -> dict:
    """``lineage_tags`` with the pipeline run id of the parent run (the pod's environment may not carry it)."""
    from sparse_core.tracking import keys, lineage_tags

    tags = lineage_tags(**kwargs)
    if getattr(tracker, "pipeline_run_id", None):
        tags[keys.TAG_PIPELINE_RUN_ID] = tracker.pipeline_run_id
    return tags


def _log_outcome(tracker, hit: bool, key: str, metrics: dict | None = None, tags: dict | None = None,
                 history: list | None = None, artifacts: list | None = None) -> None:
    cache = {TAG_CACHE: "hit" if hit else "miss", TAG_CACHE_KEY: key} if key else {TAG_CACHE: "skip"}
    tracker.set_tags({**cache, **(tags or {})})
    last = 0
    for row in history or []:
        row = dict(row)
        last = max(last, int(row.pop("epoch", 0)))
        tracker.log_metrics(row, step=last)
    if metrics:  # at the last epoch's step, so the UI's "latest" value is the final one, not an epoch's
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                            step=last)
    for path in artifacts or []:
        if Path(path).exists():
            tracker.log_artifact(path)


def open_parent_run(mlflow_uri: str = "", experiment: str = "sparsepipe", pipeline: str = "",
                    pipeline_run_id: str = "", parent_run_id: str = "", params: dict | None = None) -> dict:
    """The pipeline's parent run: ``parent_run_id`` when given (the local CLI opened it), else a new run tagged with
    the KFP run id. Returns ``{'run_id'}`` ('' when tracking is off)."""
    from sparse_core.tracking import Tracker, keys

    tags = {TAG_KIND: "pipeline", TAG_PIPELINE: pipeline}
    if pipeline_run_id:
        tags[keys.TAG_PIPELINE_RUN_ID] = pipeline_run_id
    try:
        tracker = Tracker.start(mlflow_uri or None, experiment=experiment or "sparsepipe",
                                run_name=None if parent_run_id else f"{pipeline}-{pipeline_run_id[:8]}",
                                run_id=parent_run_id or None, tags=tags)
    except BaseException as err:
        _record_error("open_run", one_line(err), isinstance(err, UserError))
        raise
    if not tracker.enabled:
        return {"run_id": ""}
    tracker.log_params({k: v for k, v in (params or {}).items() if v not in (None, "")})
    tracker.flush(timeout=30)
    return {"run_id": tracker.run_id}


def close_parent_run(mlflow_uri: str = "", experiment: str = "sparsepipe", pipeline_run_id: str = "",
                     parent_run_id: str = "", state: str = "SUCCEEDED", error: str = "") -> dict:
    """End the parent run FINISHED or FAILED from the pipeline's final state (KFP exit handler).

    The parent is ``parent_run_id``, else the run tagged with ``pipeline_run_id`` (an exit task cannot take another
    task's output, so it finds the run the way ``open_parent_run`` tagged it).
    """
    from sparse_core.tracking import keys
    from sparse_core.tracking.connection import connect, http_limits, resolve_uri

    uri = resolve_uri(mlflow_uri or None)
    if not uri:
        return {"run_id": "", "status": "untracked"}
    client = connect(uri)
    run_id = parent_run_id
    with http_limits(retries=3, timeout=30):
        if not run_id:
            exp = client.get_experiment_by_name(experiment or "sparsepipe")
            runs = client.search_runs([exp.experiment_id], filter_string=(
                f"tags.`{keys.TAG_PIPELINE_RUN_ID}` = '{pipeline_run_id}' and tags.`{TAG_KIND}` = 'pipeline'"),
                max_results=1) if exp else []
            if not runs:
                return {"run_id": "", "status": "not found"}
            run_id = runs[0].info.run_id
        failed = state.upper() not in ("SUCCEEDED", "SUCCESS", "FINISHED")
        status = "FAILED" if failed else "FINISHED"
        cause = ""
        if failed:
            cause = failed_step_cause(client, run_id) or error
            if cause:
                client.set_tag(run_id, TAG_ERROR, cause[:500])
        from sparse_core.tracking.rollup import roll_up

        roll_up(client, run_id)  # headline metrics + registered model, for the UI's compare view
        client.set_terminated(run_id, status=status)
    return {"run_id": run_id, "status": status, "error": cause}


def failed_step_cause(client, parent_run_id: str) -> str:
    """``step: cause`` of the first failed child run of a pipeline's parent run ('' if none recorded one)."""
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=200)
    for child in children:
        if child.info.status == "FAILED" and child.data.tags.get(TAG_ERROR):
            return f"{child.data.tags.get(TAG_STEP, child.info.run_name)}: {child.data.tags[TAG_ERROR]}"
    return ""


# ---------------------------------------------------------------------------------------------------- steps


def fetch_checkpoint(model: str, out: str, zoo: str = "", mlflow_uri: str = "", experiment: str = "sparsepipe",
                     parent_run_id: str = "", cache_dir: str = "", step: str = "fetch_checkpoint") -> dict:
    """Resolve ``model`` (zoo stub, ``.pt`` path, ``s3://`` URI, or an Ultralytics model yaml name) into ``out``.

    ``out/fetch.json`` says what downstream steps train from: ``model`` is a file in ``out`` (``model.pt`` or the
    yaml) or an Ultralytics model name (random init); ``''`` for an empty ``model`` (an optional teacher).
    """
    params = {"model": model, "zoo": zoo}
    with step_run(step, params, mlflow_uri, experiment, parent_run_id) as tracker:
        out_dir = Path(out)
        if not model:
            out_dir.mkdir(parents=True, exist_ok=True)
            result = {"model": "", "source": "", "sha256": "", "kind": "none"}
            _write_json(out_dir / "fetch.json", result)
            _log_outcome(tracker, False, "", tags={"sparsepipe.fetch": "none"})
            return result
        source = _resolve_source(model, zoo)
        parts = {"source": model, "sha256": _sha256(source) if source else model}

        def compute(o: Path) -> dict:
            if source is None:  # an Ultralytics model name such as yolov8n.yaml: random init downstream
                res = {"model": model, "source": model, "sha256": "", "kind": "yaml"}
            else:
                name = "model.pt" if source.suffix == ".pt" else source.name
                _link_or_copy(source, o / name)
                res = {"model": name, "source": model, "sha256": parts["sha256"],
                       "kind": "checkpoint" if name == "model.pt" else "yaml"}
            _write_json(o / "fetch.json", res)
            return res

        from sparse_core.step_cache import cached

        result, hit, key = cached(step, parts, out_dir, compute, cache_dir)
        _log_outcome(tracker, hit, key, tags=_lineage(tracker, base=model))
        return result


def _resolve_source(model: str, zoo: str) -> Path | None:
    """Local file for ``model``; None for an Ultralytics model name (yaml bundled with Ultralytics)."""
    if model.startswith("zoo:"):
        from sparse_core.zoo import resolve_model

        return Path(resolve_model(model, zoo=zoo or None))
    if model.startswith("s3://"):
        return _download_s3_file(model)
    path = Path(model)
    if path.is_file():
        return path
    if model.endswith((".yaml", ".yml")) and not path.parent.parts:
        from ultralytics.nn.tasks import yaml_model_load

        try:
            yaml_model_load(model)
        except (FileNotFoundError, OSError):
            raise UserError(f"model {model}: neither a file nor an Ultralytics model yaml name") from None
        return None
    raise UserError(f"model {model}: not found; expected a zoo: stub, a .pt path, an s3:// URI or a model yaml")


def _s3_client():
    import boto3

    return boto3.client("s3")  # endpoint and credentials from the standard AWS_* environment variables


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise UserError(f"{uri}: expected s3://BUCKET/KEY")
    return bucket, key


def _download_s3_file(uri: str) -> Path:
    import tempfile

    bucket, key = _split_s3(uri)
    dest = Path(tempfile.mkdtemp(prefix="sparsepipe-s3-")) / Path(key).name
    try:
        _s3_client().download_file(bucket, key, str(dest))
    except Exception as err:  # noqa: BLE001 - botocore raises many types; the user needs the URI and the reason
        raise UserError(f"{uri}: download failed ({one_line(err)})") from None
    return dest


def _s3_listing(uri: str) -> list[tuple[str, str, int]]:
    bucket, prefix = _split_s3(uri)
    rows = []
    try:
        for page in _s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            rows += [(o["Key"], o["ETag"], o["Size"]) for o in page.get("Contents", [])]
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{uri}: cannot list ({one_line(err)})") from None
    if not rows:
        raise UserError(f"{uri}: no objects under this prefix; expected a data set")
    return sorted(rows)


def _download_s3_prefix(uri: str, dest: Path) -> Path:
    bucket, prefix = _split_s3(uri)
    client = _s3_client()
    for key, _, _ in _s3_listing(uri):
        rel = key[len(prefix):].lstrip("/") or Path(key).name
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))
    single = dest / Path(prefix).name
    return single if single.is_file() else dest


def prepare_dataset(data: str, out: str, data_format: str = "yolo", task: str = "detect", val_fraction: float = 0.2,
                    classes: str = "", mlflow_uri: str = "", experiment: str = "sparsepipe", parent_run_id: str = "",
                    cache_dir: str = "", step: str = "prepare_dataset") -> dict:
    """Validate ``data`` (path or ``s3://`` prefix) in ``data_format`` and write an Ultralytics data set at ``out``.

    Cache key: the source's content (file hashes, or S3 ETags), format, task, split fraction and class names.
    Returns the prepare stats (``content_hash``, ``images``, ``instances``, ``per_class`` ...).
    """
    params = {"data": data, "data_format": data_format, "task": task, "val_fraction": val_fraction,
              "classes": classes}
    with step_run(step, params, mlflow_uri, experiment, parent_run_id) as tracker:
        from sparse_core.data.prepare import prepare_dataset as prepare
        from sparse_core.step_cache import cached

        class_list = [c.strip() for c in classes.split(",") if c.strip()] or None
        if data.startswith("s3://"):
            fingerprint = json.dumps(_s3_listing(data))
        else:
            fingerprint = _source_fingerprint(Path(data), data_format)
        parts = {"source": fingerprint, "format": data_format, "task": task, "val_fraction": float(val_fraction),
                 "classes": class_list}
        out_dir = Path(out)

        def compute(o: Path) -> dict:
            import tempfile

            src = data
            scratch = None
            if data.startswith("s3://"):
                scratch = Path(tempfile.mkdtemp(prefix="sparsepipe-data-"))
                src = str(_download_s3_prefix(data, scratch))
            try:
                if o.exists():
                    o.rmdir()  # prepare writes a temp folder and renames it into place
                return prepare(src, data_format, o, task=task, val_fraction=float(val_fraction), classes=class_list)
            finally:
                if scratch is not None:
                    shutil.rmtree(scratch, ignore_errors=True)

        result, hit, key = cached(step, parts, out_dir, compute, cache_dir)
        if hit:
            _rebase_data_yaml(out_dir)

        metrics = {"images_train": result["images"].get("train", 0), "images_val": result["images"].get("val", 0),
                   "instances": result.get("instances", 0)}
        _log_outcome(tracker, hit, key, metrics=metrics, tags=_lineage(tracker, data_hash=result["content_hash"]),
                     artifacts=[out_dir / "stats.json", out_dir / "data.yaml"])
        return result


def _source_fingerprint(src: Path, data_format: str) -> str:
    """What the prepared data set depends on. A YOLO ``data.yaml`` may point anywhere (its ``path``): hash the
    images and labels it names (``dataset_hash``) plus the yaml itself; otherwise every file under the source."""
    if not src.exists():
        raise UserError(f"data {src}: not found; expected a data set folder/file or an s3:// prefix")
    if data_format == "yolo":
        data_yaml = src / "data.yaml" if src.is_dir() else src
        if data_yaml.is_file():
            from sparse_core.data.hashing import dataset_hash

            try:
                return f"{dataset_hash(data_yaml)}:{_sha256(data_yaml)}"
            except UserError:
                pass  # broken source: fall through; prepare reports the problem with its location
    return _tree_fingerprint(src)


def _rebase_data_yaml(folder: Path) -> None:
    """Point ``data.yaml``'s ``path`` at ``folder`` (a restored copy lives elsewhere); replaces, never edits in
    place, because the file may be a hard link into the cache."""
    import yaml

    f = folder / "data.yaml"
    meta = yaml.safe_load(f.read_text()) or {}
    meta["path"] = str(folder.absolute())
    tmp = folder / ".data.yaml.tmp"
    tmp.write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))
    os.replace(tmp, f)


def _dataset_info(dataset: str) -> tuple[Path, str]:
    folder = Path(dataset)
    data_yaml = folder / "data.yaml" if folder.is_dir() else folder
    if not data_yaml.is_file():
        raise UserError(f"{dataset}: no data.yaml; expected the folder written by prepare_dataset")
    stats = folder / "stats.json"
    if stats.is_file():
        return data_yaml, _read_json(stats, "data set stats")["content_hash"]
    from sparse_core.data.hashing import dataset_hash

    return data_yaml, dataset_hash(data_yaml)


def _model_source(checkpoint: str) -> tuple[str, str, str]:
    """(model argument for train, its sha256 or name, base lineage) from a fetch_checkpoint / training output."""
    folder = Path(checkpoint)
    if (folder / "fetch.json").is_file():
        info = _read_json(folder / "fetch.json", "fetch_checkpoint output")
        if info["kind"] == "none":
            raise UserError(f"{checkpoint}: no model was fetched (empty 'model' parameter)")
        model = str(folder / info["model"]) if (folder / info["model"]).is_file() else info["model"]
        return model, info.get("sha256") or info["model"], info.get("source") or info["model"]
    if (folder / "model.pt").is_file():
        summary = _read_json(folder / "summary.json", "training summary") if (folder / "summary.json").is_file() else {}
        return str(folder / "model.pt"), _sha256(folder / "model.pt"), summary.get("base", "")
    raise UserError(f"{checkpoint}: neither fetch.json nor model.pt; expected a fetch_checkpoint or training output")


def _nothing_fetched(folder: str) -> bool:
    """True for a fetch_checkpoint output of an empty ``model`` (the optional teacher left out)."""
    f = Path(folder) / "fetch.json"
    return f.is_file() and _read_json(f, "fetch_checkpoint output").get("kind") == "none"


def _load_recipe_text(recipe: str, zoo: str) -> tuple[str | None, str]:
    """(path or None, text) of the recipe parameter: a path, a ``zoo:`` stub, or the recipe text itself."""
    if recipe.startswith("zoo:"):
        from sparse_core.zoo import resolve_recipe

        recipe = str(resolve_recipe(recipe, zoo=zoo or None))
    path = Path(recipe) if "\n" not in recipe and len(recipe) < 4096 else None
    if path is not None and path.is_file():
        return str(path), path.read_text(encoding="utf-8")
    if "\n" in recipe or ":" in recipe:
        return None, recipe
    raise UserError(f"recipe {recipe}: not found; expected a recipe file, a zoo: stub or the recipe text")


def _epoch_logger(history: list[dict]):
    """Ultralytics callback: one row of standard metrics per epoch (losses, mAP, lr, sparsity)."""
    from sparse_core.tracking.tracker import metric_key

    def on_fit_epoch_end(trainer) -> None:
        epoch = int(trainer.epoch) + 1
        if epoch > int(trainer.epochs) or any(r["epoch"] == epoch for r in history):
            return  # Ultralytics calls this once more after its final validation of best.pt
        row: dict[str, float] = {"epoch": epoch}
        for k, v in (trainer.metrics or {}).items():
            if isinstance(v, (int, float)):
                row[STANDARD_METRICS.get(k, metric_key(k))] = float(v)
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

    return on_fit_epoch_end


def _train_stage(stage: str, model: str, model_sha: str, base: str, data_yaml: Path, data_hash: str,
                 recipe_obj, full_recipe_yaml: str | None, out_dir: Path, epochs: int, imgsz: int, batch: int,
                 workers: int, seed: int, device: str, plots: bool, teacher: str, tracker, cache_dir: str) -> dict:
    """Train one stage (shared by sparse_train and qat) through the cache; returns the stage result."""
    from sparse_core.step_cache import cached

    stage_yaml = recipe_obj.to_yaml() if recipe_obj is not None else None
    teacher_model, teacher_sha = ("", "")
    if teacher and not _nothing_fetched(teacher):
        teacher_model, teacher_sha, _ = _model_source(teacher)
    parts = {"model": model_sha, "data": data_hash, "recipe": stage_yaml, "epochs": int(epochs), "imgsz": int(imgsz),
             "batch": int(batch), "seed": int(seed), "teacher": teacher_sha, "device": device or "auto"}

    def compute(o: Path) -> dict:
        from sparse_core.integrations.ultralytics import run as ul_run

        history: list[dict] = []
        recipe_path = None
        if stage_yaml is not None:
            recipe_path = o / "recipe.yaml"
            recipe_path.write_text(stage_yaml)
        if full_recipe_yaml is not None:
            (o / "recipe.full.yaml").write_text(full_recipe_yaml)
        kwargs = dict(model=model, data=str(data_yaml), recipe=str(recipe_path) if recipe_path else None,
                      epochs=int(epochs) or None, imgsz=int(imgsz), batch=int(batch), workers=int(workers),
                      project=str(o), name="train", seed=int(seed), plots=plots, device=device or None,
                      meta={"data_hash": data_hash, "base": base, "mlflow_run_id": tracker.run_id},
                      callbacks=[("on_fit_epoch_end", _epoch_logger(history))])
        if teacher_model:
            kwargs["teacher"] = teacher_model  # used by the recipe's distillation modifiers
        t0 = time.perf_counter()
        summary = ul_run.train(**kwargs)
        seconds = time.perf_counter() - t0
        return _finish_training(o, summary, recipe_obj is not None, data_yaml, imgsz, batch, device, history, seconds,
                                data_hash, base)

    result, hit, key = cached(stage, parts, out_dir, compute, cache_dir)
    tags = _lineage(tracker, recipe=stage_yaml, data_hash=data_hash, base=base)
    if full_recipe_yaml is not None:
        tags["recipe_full_sha256"] = result.get("recipe_full_sha256", "")
    _log_outcome(tracker, hit, key, metrics={k: result[k] for k in ("map50", "map50_95", "sparsity", "train_seconds")
                                             if k in result}, tags=tags, history=result.get("history"),
                 artifacts=[out_dir / n for n in ("summary.json", "recipe.yaml", "recipe.full.yaml",
                                                  "layer_sparsity.png", "results.csv")])
    return result


def _finish_training(o: Path, summary: dict, had_recipe: bool, data_yaml: Path, imgsz: int, batch: int, device: str,
                     history: list, seconds: float, data_hash: str, base: str) -> dict:
    """Keep what later steps need (model.pt + summary), drop the bulky training folder.

    With a recipe the recipe's end state is the product (``last.pt``: the final sparsity/quantization), re-validated
    when it differs from the ``best.pt`` Ultralytics summarised; without one, ``best.pt``.
    """
    from sparse_core.checkpoint import checkpoint_model, load_checkpoint
    from sparse_core.integrations.ultralytics.run import val
    from sparse_core.sparsity import weight_sparsity

    best, last = Path(summary["weights"]["best"]), Path(summary["weights"]["last"])
    chosen = last if (had_recipe and last.is_file()) or not best.is_file() else best
    metrics = {k: summary.get(k, 0.0) for k in ("map50", "map50_95", "precision", "recall", "mask_map50",
                                                 "mask_map50_95") if k in summary}
    sparsity = summary.get("sparsity", 0.0)
    if chosen != best:
        v = val(str(chosen), data=str(data_yaml), imgsz=imgsz, batch=batch, device=device or None)
        metrics = {k: v[k] for k in ("map50", "map50_95", "precision", "recall", "mask_map50", "mask_map50_95")
                   if k in v}
        sparsity = weight_sparsity(checkpoint_model(load_checkpoint(chosen)))[0]
    _link_or_copy(chosen, o / "model.pt")
    train_dir = Path(summary.get("save_dir") or o / "train")
    for name in ("results.csv", "layer_sparsity.png", "sparsity_over_epochs.png"):
        if (train_dir / name).is_file():
            shutil.move(str(train_dir / name), o / name)
    shutil.rmtree(train_dir, ignore_errors=True)  # weights/ with last+best (resume state): not needed downstream
    result = {
        "weights": "model.pt", "chosen": chosen.name, **metrics, "sparsity": float(sparsity),
        "epochs": summary.get("epochs"), "task": summary.get("task"), "imgsz": summary.get("imgsz"),
        "recipe_sha256": summary.get("recipe_sha256"), "data_hash": data_hash, "base": base,
        "train_seconds": round(seconds, 3), "history": history,
    }
    if (o / "recipe.full.yaml").is_file():
        from sparse_core.tracking.lineage import file_sha256

        result["recipe_full_sha256"] = file_sha256(o / "recipe.full.yaml")
    _write_json(o / "summary.json", result)
    return result


def sparse_train(checkpoint: str, dataset: str, out: str, recipe: str = "", recipe_args: str = "", epochs: int = 0,
                 imgsz: int = 640, batch: int = 16, workers: int = 2, seed: int = 0, zoo: str = "",
                 teacher: str = "", device: str = "", sparsity_target: float = -1.0,
                 sparsity_arg: str = "final_sparsity", plots: bool = False, mlflow_uri: str = "",
                 experiment: str = "sparsepipe", parent_run_id: str = "", cache_dir: str = "",
                 step: str = "sparse_train") -> dict:
    """Train the recipe's pruning/LR stage (``Recipe.split('sparse')``) from ``checkpoint`` on ``dataset``.

    ``recipe_args`` (JSON) overrides recipe variables; ``sparsity_target`` >= 0 also sets variable ``sparsity_arg``
    (the sweep's knob). ``out`` gets ``model.pt``, ``summary.json``, ``recipe.yaml`` (this stage) and
    ``recipe.full.yaml`` (the whole resolved recipe, which ``qat`` splits, so both stages see the same arguments).
    No recipe: plain (dense) fine-tuning for ``epochs``.
    """
    params = {"recipe": recipe if len(recipe) < 500 else f"<{len(recipe)} chars of recipe text>",
              "recipe_args": recipe_args, "epochs": epochs, "imgsz": imgsz, "batch": batch, "seed": seed,
              "teacher": bool(teacher), "device": device,
              "sparsity_target": sparsity_target if float(sparsity_target) >= 0 else None}
    run_name = f"{step}@{float(sparsity_target):g}" if float(sparsity_target) >= 0 else step
    with step_run(step, params, mlflow_uri, experiment, parent_run_id, run_name=run_name) as tracker:
        from sparse_core.recipe import load_recipe, parse_recipe_args

        model, model_sha, base = _model_source(checkpoint)
        data_yaml, data_hash = _dataset_info(dataset)
        full = part = None
        if recipe:
            args = parse_recipe_args(recipe_args)
            if float(sparsity_target) >= 0:
                args[sparsity_arg] = float(sparsity_target)
            path, text = _load_recipe_text(recipe, zoo)
            full = load_recipe(path or text, args)
            part = full.split("sparse")
            tracker.log_params(full.summary())
            tracker.log_text(text, "recipe.original.yaml")
        elif recipe_args or float(sparsity_target) >= 0:
            raise UserError("recipe_args/sparsity_target given without a recipe; expected a recipe to apply them to")
        return _train_stage(step, model, model_sha, base, data_yaml, data_hash, part,
                            full.to_yaml() if full is not None else None, Path(out), epochs, imgsz, batch, workers,
                            seed, device, _bool(plots), teacher, tracker, cache_dir)


def qat(model: str, dataset: str, out: str, epochs: int = 0, imgsz: int = 640, batch: int = 16, workers: int = 2,
        seed: int = 0, teacher: str = "", device: str = "", plots: bool = False, mlflow_uri: str = "",
        experiment: str = "sparsepipe", parent_run_id: str = "", cache_dir: str = "", step: str = "qat") -> dict:
    """Quantization-aware stage: ``Recipe.split('qat')`` of ``model/recipe.full.yaml``, trained from
    ``model/model.pt`` with the pruning masks held (ConstantPruningModifier over the pruned layers).

    A recipe without QuantizationModifier has no QAT stage: the input passes through unchanged (hard links), and
    the child run is tagged ``sparsepipe.qat=skipped``.
    """
    params = {"epochs": epochs, "imgsz": imgsz, "batch": batch, "seed": seed, "device": device}
    with step_run(step, params, mlflow_uri, experiment, parent_run_id) as tracker:
        from sparse_core.recipe import load_recipe

        src, out_dir = Path(model), Path(out)
        summary = _read_json(src / "summary.json", "training summary")
        full_yaml = src / "recipe.full.yaml"
        full = load_recipe(str(full_yaml)) if full_yaml.is_file() else None
        if full is None or not full.of_type("QuantizationModifier"):
            out_dir.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                if f.is_file():
                    _link_or_copy(f, out_dir / f.name)
            result = {**summary, "qat": "skipped"}
            _log_outcome(tracker, False, "", metrics={k: summary[k] for k in ("map50", "map50_95", "sparsity")
                                                      if k in summary}, tags={"sparsepipe.qat": "skipped"})
            return result
        data_yaml, data_hash = _dataset_info(dataset)
        part = rebase_epochs(full.split("qat"), full.qat_start_epoch() or 0.0)
        result = _train_stage(step, str(src / "model.pt"), _sha256(src / "model.pt"), summary.get("base", ""),
                              data_yaml, data_hash, part, full_yaml.read_text(), out_dir, epochs, imgsz, batch,
                              workers, seed, device, _bool(plots), teacher, tracker, cache_dir)
        tracker.set_tags({"sparsepipe.qat": "trained"})
        return {**result, "qat": "trained"}


EPOCH_FIELDS = ("start_epoch", "end_epoch", "disable_quantization_observer_epoch", "freeze_bn_stats_epoch")


def rebase_epochs(recipe, offset: float):
    """``recipe`` with every epoch field moved ``offset`` epochs earlier (not below 0; ``-1`` = unset stays).

    ``Recipe.split("qat")`` keeps absolute epochs (QAT from epoch 50 of 56). The qat step trains a new run from the
    sparse stage's checkpoint, which starts at epoch 0, so the stage is rebased: QAT, the held masks and the LR
    schedule start at 0 and the run lasts ``num_epochs - qat_start`` epochs. Limits: an LR function that began
    before the QAT start restarts its curve at 0; epoch lists (``milestones``) are not moved.
    """
    from sparse_core.recipe import Recipe

    if not offset:
        return recipe
    mods = []
    for m in recipe.modifiers:
        update = {f: max(0.0, float(getattr(m, f)) - offset) for f in EPOCH_FIELDS
                  if isinstance(getattr(m, f, None), (int, float)) and getattr(m, f) >= 0}
        moved = m.model_copy(update=update)
        moved.__pydantic_fields_set__ = set(m.model_fields_set) | set(update)
        mods.append(moved.placed(m.group, m.line))
    out = Recipe(None, "", recipe.args, dict(recipe.variables), mods, recipe.version)
    out.original_text = out.to_yaml()
    import hashlib

    out.sha256 = hashlib.sha256(out.original_text.encode()).hexdigest()
    out.path = recipe.path
    return out


def export_model(model: str, out: str, imgsz: int = 0, batch: int = 1, opset: int = 17, mlflow_uri: str = "",
                 experiment: str = "sparsepipe", parent_run_id: str = "", cache_dir: str = "",
                 step: str = "export_model") -> dict:
    """ONNX deployment folder (``model.onnx``, ``recipe.yaml``, ``data.yaml``, ``export.json``, plus ``model.pt``
    and ``summary.json`` of the training) from ``model/model.pt``; ``imgsz`` 0 = the training image size."""
    params = {"imgsz": imgsz, "batch": batch, "opset": opset}
    with step_run(step, params, mlflow_uri, experiment, parent_run_id) as tracker:
        from sparse_core.step_cache import cached

        src, out_dir = Path(model), Path(out)
        weights = src / "model.pt"
        if not weights.is_file():
            raise UserError(f"{src}: no model.pt; expected a training step output")
        summary = _read_json(src / "summary.json", "training summary") if (src / "summary.json").is_file() else {}
        parts = {"weights": _sha256(weights), "imgsz": int(imgsz), "batch": int(batch), "opset": int(opset)}

        def compute(o: Path) -> dict:
            from sparse_core.export import export_model as export

            if o.exists() and not any(o.iterdir()):
                o.rmdir()
            info = export(str(weights), o, imgsz=int(imgsz) or None, batch=int(batch), opset=int(opset))
            _link_or_copy(weights, o / "model.pt")
            if (src / "summary.json").is_file():
                _link_or_copy(src / "summary.json", o / "summary.json")
            return {k: v for k, v in info.items() if k != "source"}

        result, hit, key = cached(step, parts, out_dir, compute, cache_dir)
        from sparse_core.tracking.keys import TAG_ONNX_SHA256

        tags = _lineage(tracker, recipe=(out_dir / "recipe.yaml").read_text() if (out_dir / "recipe.yaml").is_file()
                            else None, data_hash=summary.get("data_hash"), base=summary.get("base"))
        tags[TAG_ONNX_SHA256] = result.get("sha256", "")
        metrics = {"size_mb": result.get("size_bytes", 0) / 1e6, "size_gzip_mb": result.get("size_gzip_bytes", 0) / 1e6,
                   "onnx_sparsity": result.get("sparsity", 0.0), "parity_max_abs_diff": result.get("parity_max_abs_diff", 0.0)}
        _log_outcome(tracker, hit, key, metrics=metrics, tags=tags,
                     artifacts=[out_dir / "export.json", out_dir / "recipe.yaml", out_dir / "data.yaml"])
        return result


def benchmark(model: str, out: str, engine: str = "onnxruntime", threads: int = 0, seconds: float = 0.0,
              iterations: int = 50, warmup: int = 5, mlflow_uri: str = "", experiment: str = "sparsepipe",
              parent_run_id: str = "", cache_dir: str = "", step: str = "benchmark") -> dict:
    """Throughput/latency/size of the deployment folder ``model`` (``sparse_core.bench``); ``out`` is a JSON file.

    Cached per (model.onnx sha256, engine, threads, run length, CPU model): a speed measured on another CPU is not
    reused.
    """
    params = {"engine": engine, "threads": threads, "seconds": seconds, "iterations": iterations, "warmup": warmup}
    with step_run(step, params, mlflow_uri, experiment, parent_run_id) as tracker:
        from sparse_core.bench import benchmark as bench
        from sparse_core.bench.cpu import cpu_info
        from sparse_core.step_cache import cached

        deploy = Path(model)
        onnx_path = deploy / "model.onnx"
        if not onnx_path.is_file():
            raise UserError(f"{deploy}: no model.onnx; expected the export_model output")
        threads_n = int(threads) or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                     else os.cpu_count() or 1)
        cpu = cpu_info()
        parts = {"onnx": _sha256(onnx_path), "engine": engine, "threads": threads_n, "seconds": float(seconds),
                 "iterations": int(iterations), "warmup": int(warmup),
                 "cpu": {k: cpu.get(k) for k in ("model", "isa", "flags", "available_cpus")}}
        out_path = Path(out)

        def compute(o: Path) -> dict:
            res = bench(str(deploy), engine=engine, threads=threads_n, warmup=int(warmup),
                        iterations=int(iterations) if not float(seconds) else None,
                        seconds=float(seconds) or None)
            res["model"] = "model.onnx"
            _write_json(o / "benchmark.json", res)
            return res

        result, hit, key = cached(step, parts, out_path.parent / f".{out_path.name}.d", compute, cache_dir)
        _write_json(out_path, result)
        shutil.rmtree(out_path.parent / f".{out_path.name}.d", ignore_errors=True)
        _log_outcome(tracker, hit, key, metrics=bench_metrics(result), artifacts=[out_path])
        return result


def register_model(model: str, benchmark: str, name: str, alias: str = "candidate", tags: str = "",
                   mlflow_uri: str = "", experiment: str = "sparsepipe", parent_run_id: str = "",
                   step: str = "register_model") -> dict:
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
    with step_run(step, params, mlflow_uri, experiment, parent_run_id) as tracker:
        from sparse_core.tracking import registry
        from sparse_core.tracking.keys import TAG_ONNX_SHA256, TAG_RECIPE_SHA256

        if not tracker.enabled:
            raise UserError("register_model: no MLflow tracking URI; set the mlflow_uri parameter or "
                            "MLFLOW_TRACKING_URI")
        deploy = Path(model)
        summary = _read_json(deploy / "summary.json", "training summary") if (deploy / "summary.json").is_file() else {}
        bench = _read_json(Path(benchmark), "benchmark result")
        metrics = {k: summary[k] for k in ("map50", "map50_95", "mask_map50", "mask_map50_95", "sparsity")
                   if isinstance(summary.get(k), (int, float))}
        metrics.update(bench_metrics(bench))
        metrics.update(engine_accuracy(deploy))
        tracker.log_metrics(metrics)
        lineage = _lineage(tracker, recipe=(deploy / "recipe.yaml").read_text() if (deploy / "recipe.yaml").is_file()
                               else None, data_hash=summary.get("data_hash"), base=summary.get("base"))
        tracker.set_tags({**lineage, **{str(k): str(v) for k, v in extra.items()}})
        tracker.flush(timeout=60)
        onnx_sha = _sha256(deploy / "model.onnx")
        existing = _existing_version(tracker.client, name, onnx_sha, lineage.get(TAG_RECIPE_SHA256), extra)
        if existing is not None:
            if alias:
                tracker.client.set_registered_model_alias(name, alias, existing.version)
            result = {"name": name, "version": str(existing.version), "run_id": existing.run_id,
                      "model_uri": f"models:/{name}/{existing.version}", "onnx_sha256": onnx_sha, "reused": True}
        else:
            result = registry.register_model(deploy, name, run_id=tracker.run_id, alias=alias or None,
                                             tracking_uri=tracker.uri, tags={**lineage, **extra})
            result["reused"] = False
        tracker.set_tags({"sparsepipe.registered": f"{name}/{result['version']}",
                          TAG_CACHE: "hit" if result["reused"] else "miss", TAG_ONNX_SHA256: onnx_sha})
        return result


def _existing_version(client, name: str, onnx_sha: str, recipe_sha: str | None, extra: dict):
    from mlflow.exceptions import MlflowException

    from sparse_core.tracking.keys import TAG_ONNX_SHA256, TAG_RECIPE_SHA256

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    for mv in sorted(versions, key=lambda v: -int(v.version)):
        t = mv.tags or {}
        if (t.get(TAG_ONNX_SHA256) == onnx_sha and t.get(TAG_RECIPE_SHA256) == recipe_sha
                and all(t.get(str(k)) == str(v) for k, v in extra.items())):
            return mv
    return None


def select_champion(name: str, metric: str = "images_per_s", constraint: str = "map50>=0.9*dense",
                    higher_is_better: bool = True, mlflow_uri: str = "", experiment: str = "sparsepipe",
                    parent_run_id: str = "", step: str = "select_champion", max_map_drop: float = -1.0) -> dict:
    """Move alias ``champion`` of ``name`` to the best version by ``metric`` among those meeting ``constraint``
    and, when ``max_map_drop`` >= 0, losing at most that many mAP50-95 points against the dense model
    (``sparse_core.tracking.registry.promote_champion``)."""
    from sparse_core.tracking import registry

    if float(max_map_drop) >= 0:
        budget = registry.map_drop_constraint(float(max_map_drop))
        constraint = f"{constraint}, {budget}" if constraint else budget
    params = {"name": name, "metric": metric, "constraint": constraint, "higher_is_better": higher_is_better,
              "max_map_drop": max_map_drop}
    with step_run(step, params, mlflow_uri, experiment, parent_run_id) as tracker:
        if not tracker.enabled:
            raise UserError("select_champion: no MLflow tracking URI; set mlflow_uri or MLFLOW_TRACKING_URI")
        result = registry.promote_champion(name, metric, higher_is_better=_bool(higher_is_better),
                                           constraint=constraint or None, tracking_uri=tracker.uri)
        tracker.set_tags({"sparsepipe.champion": f"{name}/{result['version']}"})
        tracker.log_metrics({f"champion_{metric}": result["value"]})
        return result
