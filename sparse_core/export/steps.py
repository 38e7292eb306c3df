"""The pipeline steps of the deployment choice (re-exported by ``sparse_core.steps``; components call them there).

- ``decide_precision`` (between sparse_train and qat): does INT8 pay on the target engine? ``precision`` auto asks
  the probe (``export.probe``, seconds); where it does not pay (or ``precision`` is float) the QAT stage is cut from
  the recipe the qat step reads, so qat passes the float model through and no QAT epochs are spent. DeepSparse's
  QAT gets per-tensor weights (``quantization.scheme.for_engine``).
- ``choose_deployment`` (after export): the float model and the exported (QAT) model's forms timed on the target
  and the fastest within the accuracy gate written as the deployment (``export.choose``); the candidates' speeds go
  to the step's run and to the pipeline's parent run side by side.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from sparse_core.atomic import write_json
from sparse_core.errors import UserError
from sparse_core.step_cache import link_or_copy
from sparse_core.tracking.step_run import StepContext, log_outcome, step_run

DECISION_FILE = "precision.json"


def _without_qat_or_for_engine(full, run_qat: bool, engine: str):
    """The resolved recipe the qat step will read: QAT cut out, or its modifiers set up for ``engine``."""
    from sparse_core.quantization.scheme import for_engine

    if not run_qat:
        return full.derived([m for m in full.modifiers if m.type_name != "QuantizationModifier"])
    return full.derived([for_engine(m, engine) if m.type_name == "QuantizationModifier" else m
                         for m in full.modifiers])


def _decide(src: Path, full, engine: str, precision: str, imgsz: int) -> dict:
    if full is None or not full.of_type("QuantizationModifier"):
        return {"qat": "none", "why": "the recipe has no quantization stage"}
    if precision != "auto":
        return {"qat": "run" if precision == "int8" else "skip", "why": f"precision {precision}"}
    from sparse_core.export.probe import probe

    p = probe(src / "model.pt", engine, full.of_type("QuantizationModifier")[0], imgsz=imgsz or None)
    verdict = "pays" if p["int8_pays"] else "does not pay"
    return {"qat": "run" if p["int8_pays"] else "skip", "probe": p,
            "why": f"probe: post-training INT8 ({p['best_int8']}) runs {p['speedup']:.2f}x the float model on "
                   f"{engine} ({p['engine_precision']}, {p['cpu_isa']}): INT8 {verdict}"}


def decide_precision(model: str, out: str, engine: str = "onnxruntime", precision: str = "auto", imgsz: int = 640,
                     ctx: StepContext = StepContext()) -> dict:
    """``model`` (sparse_train output) to ``out`` for the qat step: the same files, its ``recipe.full.yaml``
    without the QAT stage where INT8 will not pay on ``engine`` (see module docstring); ``precision.json`` says
    why. Not cached: the probe measures the machine the step runs on."""
    from sparse_core.bench.runner import ENGINES
    from sparse_core.export.choose import check_precision
    from sparse_core.recipe import load_recipe

    check_precision(precision)
    if engine not in ENGINES:
        raise UserError(f"engine: {engine!r} is not supported; expected one of {', '.join(ENGINES)}")
    with step_run(ctx.named("decide_precision"), {"engine": engine, "precision": precision, "imgsz": imgsz},
                  ctx) as tracker:
        src, out_dir = Path(model), Path(out)
        full_yaml = src / "recipe.full.yaml"
        if not (src / "model.pt").is_file():
            raise UserError(f"{src}: no model.pt; expected the sparse_train output")
        full = load_recipe(str(full_yaml), staged=True) if full_yaml.is_file() else None
        decision = {"engine": engine, "precision": precision, **_decide(src, full, engine, precision, imgsz)}
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and f.name != "recipe.full.yaml":
                link_or_copy(f, out_dir / f.name)
        if full is not None:
            recipe = _without_qat_or_for_engine(full, decision["qat"] == "run", engine) if decision["qat"] != "none" \
                else full
            (out_dir / "recipe.full.yaml").write_text(recipe.to_yaml())
        write_json(out_dir / DECISION_FILE, decision)
        probe = decision.get("probe") or {}
        log_outcome(tracker, False, "", metrics={"probe_int8_speedup": probe["speedup"]} if probe else {},
                    tags={"sparsepipe.qat_decision": decision["qat"], "sparsepipe.qat_why": decision["why"][:250]},
                    artifacts=[out_dir / DECISION_FILE])
        return decision


def _float_export(float_model: Path, imgsz: int, tmp: Path) -> Path:
    """The float (sparse_train) model exported beside the QAT one, with its model.pt and summary.json."""
    from sparse_core.export import export_model

    weights = float_model / "model.pt"
    if not weights.is_file():
        raise UserError(f"{float_model}: no model.pt; expected the sparse_train output")
    info = export_model(str(weights), tmp / "float", imgsz=imgsz)
    if info["quantized"]:
        raise UserError(f"{float_model}: model.pt is quantized; expected the float model QAT started from")
    for name in ("model.pt", "summary.json"):
        if (float_model / name).is_file():
            link_or_copy(float_model / name, tmp / "float" / name)
    return tmp / "float"


def choose_deployment(deployment: str, out: str, engine: str = "onnxruntime", float_model: str = "",
                      precision: str = "auto", seconds: float = 5.0, ctx: StepContext = StepContext()) -> dict:
    """The deployment folder ``out`` chosen on ``engine`` among ``deployment`` (export_model output) and, when that
    is quantized, ``float_model`` (sparse_train output) exported at the same size; returns deployment.json."""
    from sparse_core.bench.runner import ENGINES
    from sparse_core.export import choose

    choose.check_precision(precision)
    if engine not in ENGINES:
        raise UserError(f"engine: {engine!r} is not supported; expected one of {', '.join(ENGINES)}")
    params = {"engine": engine, "precision": precision, "seconds": seconds}
    with step_run(ctx.named("choose_deployment"), params, ctx) as tracker:
        src = Path(deployment)
        info = json.loads((src / "export.json").read_text()) if (src / "export.json").is_file() else None
        if info is None:
            raise UserError(f"{src}: no export.json; expected the export_model output")
        with tempfile.TemporaryDirectory(prefix="sparsepipe-choose-") as tmp:
            folders = {"int8" if info["quantized"] else "float": src}
            if info["quantized"] and float_model and (Path(float_model) / "model.pt").is_file():
                folders = {"float": _float_export(Path(float_model), info["imgsz"], Path(tmp)), **folders}
            data = (info.get("accuracy") or {}).get("data")
            decision = choose.choose(folders, engine, precision=precision, data=data, seconds=float(seconds))
            decision = choose.write_deployment(out, folders, decision)
        metrics = choose.candidate_metrics(decision)
        log_outcome(tracker, False, "", metrics=metrics, tags=choose.version_tags(decision),
                    artifacts=[Path(out) / choose.DEPLOYMENT_FILE])
        _log_parent(tracker, ctx, engine, metrics)
        return decision


def _log_parent(tracker, ctx: StepContext, engine: str, metrics: dict) -> None:
    """The candidates' speeds on the pipeline's parent run too, side by side (``<engine>_candidate_*``)."""
    if not (tracker.enabled and ctx.parent_run_id):
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracker.uri)
    for key, value in metrics.items():
        client.log_metric(ctx.parent_run_id, f"{engine}_{key}", float(value))


def chosen_tags(deploy: str | Path) -> dict[str, str]:
    """Registry version tags of a deployment folder ({} when it was not chosen by measurement)."""
    from sparse_core.export.choose import version_tags
    from sparse_core.export.layout import read_decision

    return version_tags(read_decision(deploy)) if Path(deploy).is_dir() else {}


__all__ = ["choose_deployment", "chosen_tags", "decide_precision"]
