"""Pipeline steps of ``auto_sparsify`` (re-exported by ``sparse_core.steps``): analyze and generate_recipe.

Each runs in a child MLflow run of the pipeline (``steps.step_run``) and reads/writes the folders the other steps
use: fetch_checkpoint / prepare_dataset outputs in, an analysis folder and a recipe out.
"""

from __future__ import annotations

import json
from pathlib import Path

from sparse_core.data.fingerprint import prepared_info
from sparse_core.step_inputs import as_bool, model_source
from sparse_core.tracking.step_run import StepContext, step_run


def analyze(checkpoint: str, dataset: str, out: str, engine: str = "onnxruntime", imgsz: int = 640,
            levels: str = "0.25,0.5,0.75", val_images: int = 16, calib_images: int = 8, seconds: float = 3.0,
            mlflow_uri: str = "", experiment: str = "sparsepipe", parent_run_id: str = "") -> dict:
    """``sparsepipe analyze`` of the fetched checkpoint on the prepared data set; ``out`` gets analysis.json."""
    from sparse_core.sensitivity.analyze import analyze as run, parse_engines, parse_levels

    params = {"engine": engine, "imgsz": imgsz, "levels": levels, "val_images": val_images,
              "calib_images": calib_images}
    ctx = StepContext(mlflow_uri=mlflow_uri, experiment=experiment, parent_run_id=parent_run_id)
    with step_run("analyze", params, ctx) as tracker:
        model, _, _ = model_source(checkpoint)
        data_yaml, _ = prepared_info(dataset)
        result = run(model, str(data_yaml), out, parse_engines(engine), imgsz, parse_levels(levels), None, val_images,
                     calib_images, 8, seconds)
        tracker.log_metrics({"analyze.dense_map50_95": result["dense"]["map50_95"],
                             "analyze.total_s": result["timing"]["total_s"]})
        for name in ("analysis.json", "sensitivity.png", "latency_share.png"):
            tracker.log_artifact(Path(out) / name, "analysis")
        return result


def generate_recipe(analysis: str, out: str, target_speedup: float = 2.0, target_latency_ms: float = 0.0,
                    engine: str = "", qat: bool = False, epochs: int = 10, qat_epochs: int = 3, mlflow_uri: str = "",
                    experiment: str = "sparsepipe", parent_run_id: str = "") -> str:
    """``sparsepipe recipe generate`` from an analyze output folder; writes ``out/recipe.yaml``, returns its text."""
    from sparse_core.sensitivity.generate import generate

    params = {"target_speedup": target_speedup, "target_latency_ms": target_latency_ms, "engine": engine,
              "qat": qat, "epochs": epochs}
    ctx = StepContext(mlflow_uri=mlflow_uri, experiment=experiment, parent_run_id=parent_run_id)
    with step_run("generate_recipe", params, ctx) as tracker:
        folder = Path(analysis)
        path = folder / "analysis.json" if folder.is_dir() else folder
        Path(out).mkdir(parents=True, exist_ok=True)
        plan = generate(str(path), str(Path(out) / "recipe.yaml"),
                        None if target_latency_ms > 0 else target_speedup, target_latency_ms or None,
                        engine or None, as_bool(qat), epochs, None, qat_epochs)
        (Path(out) / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
        tracker.log_metrics({"generate.predicted_ms": plan["predicted_ms"], "generate.dense_ms": plan["dense_ms"],
                             "generate.predicted_map_drop": plan["predicted_map_drop"]})
        tracker.log_artifact(Path(out) / "recipe.yaml", "recipe")
        return (Path(out) / "recipe.yaml").read_text()
