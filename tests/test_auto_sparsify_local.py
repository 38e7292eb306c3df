"""auto_sparsify end to end with kfp.local against a real MLflow server: analysis -> generated recipe -> KD
structured training -> QAT -> export -> benchmark -> registered model carrying the analysis and recipe lineage.
Tiny: 64 px, 8 training images, one analysis level, 2 + 1 epochs."""

from __future__ import annotations

import os

import pytest

from mlflow_server import start_mlflow  # tests/ helper: a real `mlflow server` process
from pipelines.local import run_local
from sparse_core.data.synth import synth_dataset

IMGSZ = 64


@pytest.fixture
def env(tmp_path, monkeypatch):
    from sparse_core.integrations.ultralytics import train

    monkeypatch.setenv("SPARSEPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SPARSEPIPE_STEP_CACHE", raising=False)
    data = synth_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=IMGSZ, seed=3).parent
    base = train("yolov8n.yaml", str(data / "data.yaml"), epochs=1, imgsz=IMGSZ, batch=8, workers=0,
                 project=str(tmp_path / "base"), name="dense", plots=False)["weights"]["last"]
    uri, stop = start_mlflow(tmp_path / "mlflow", backend="sqlite")
    yield {"root": tmp_path, "data": data, "base": base, "uri": uri}
    stop()


def test_auto_sparsify_local(env):
    from mlflow.tracking import MlflowClient

    params = {"model": env["base"], "data": str(env["data"]), "target_speedup": 1.3, "levels": "0.5",
              "max_map_drop": 5.0,
              "val_images": 2, "epochs": 2, "qat_epochs": 1, "imgsz": IMGSZ, "deploy_imgsz": IMGSZ, "batch": 8,
              "workers": 0, "bench_iterations": 5, "mlflow_uri": env["uri"], "experiment": "auto",
              "register_name": "auto-tiny", "cache_dir": str(env["root"] / "cache")}
    result = run_local("auto_sparsify", params, pipeline_root=env["root"] / "kfp")
    assert result["status"] == "SUCCEEDED"
    client = MlflowClient(env["uri"], registry_uri=env["uri"])
    parent = client.get_run(result["parent_run_id"])
    kids = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    steps = {r.data.tags["sparsepipe.step"]: r for r in kids}
    assert {"analyze", "generate_recipe", "sparse_train", "qat", "export_model", "benchmark",
            "register_model"} <= set(steps)
    assert {"analysis/analysis.json", "analysis/sensitivity.png"} <= {
        a.path for a in client.list_artifacts(steps["analyze"].info.run_id, "analysis")}
    assert steps["generate_recipe"].data.metrics["generate.predicted_ms"] > 0
    mv = client.get_model_version_by_alias("auto-tiny", "candidate")
    assert mv.tags.get("recipe_sha256") and mv.tags.get("pipeline_run_id") == parent.data.tags["pipeline_run_id"]
    # lineage of the registered version: the analysis the recipe came from, its target, the budget it met
    analysis_sha = mv.tags.get("sparsepipe.recipe_analysis_sha256", "")
    assert len(analysis_sha) == 64 and int(analysis_sha, 16) >= 0
    assert mv.tags["sparsepipe.recipe_target"].startswith("1.3x speedup")
    assert mv.tags["sparsepipe.budget"].startswith("within_budget: max 5.0 points, 1 attempt(s), kept sparsity x1")
    train_run = steps["sparse_train"].data
    assert train_run.tags["budget.status"] == "within_budget" and "budget.map50_95" in train_run.metrics
    assert os.path.exists(env["base"])
