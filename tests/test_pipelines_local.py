"""Pipelines run end to end with kfp.local (SubprocessRunner, this interpreter) against a real MLflow server
(sqlite backend, proxied artifacts): parent run + one child run per step, registered versions with lineage, the
content-keyed step cache, a recipe change re-running training, a 2-target sparsity sweep moving ``champion``, and
a corrupt data set failing the pipeline with its one-line cause and the parent run FAILED.

Tiny settings (64 px, 8 training images, 1-2 epochs) keep each pipeline run to tens of seconds on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlflow_server import start_mlflow  # tests/ helper: a real `mlflow server` process
from sparse_core.data.synth import synth_dataset
from pipelines.local import run_local
from sparse_core.tracking.lineage import file_sha256

STEPS = {"fetch_checkpoint", "prepare_dataset", "sparse_train", "decide_precision", "qat", "export_model",
         "choose_deployment", "benchmark", "register_model"}
UNCACHED = {"qat", "decide_precision", "choose_deployment"}  # no cache key: qat here has no quantization; the
# probe and the choice are timings on the machine the step runs on
IMGSZ = 64
STUB = "zoo:cv/detection/yolov8-n/pytorch/ultralytics/shapes/base-none"
TRANSFER = """
version: 1.1.0
num_epochs: 2
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
pruning_modifiers:
  - !ConstantPruningModifier
    start_epoch: 0.0
    params: ["re:^((?!dfl).)*$"]
"""
GMP = """
version: 1.1.0
num_epochs: 2
final_sparsity: 0.5
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
pruning_modifiers:
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.05
    final_sparsity: eval(final_sparsity)
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.5
    inter_func: cubic
    leave_enabled: True
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Data set, a dense base checkpoint (1 epoch from yolov8n.yaml), an MLflow server, isolated home and cache."""
    from sparse_core.integrations.ultralytics import train

    root = tmp_path_factory.mktemp("pipelines")
    saved = {k: os.environ.get(k) for k in ("SPARSEPIPE_HOME", "MLFLOW_TRACKING_URI", "SPARSEPIPE_STEP_CACHE",
                                             "SPARSEPIPE_CACHE")}
    os.environ["SPARSEPIPE_HOME"] = str(root / "home")
    os.environ["SPARSEPIPE_CACHE"] = str(root / "zoo-cache")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("SPARSEPIPE_STEP_CACHE", None)
    data = synth_dataset(root / "data", n_train=8, n_val=4, imgsz=IMGSZ, seed=3).parent
    base = train("yolov8n.yaml", str(data / "data.yaml"), epochs=1, imgsz=IMGSZ, batch=8, workers=0,
                 project=str(root / "base"), name="dense", plots=False)["weights"]["best"]
    (root / "transfer.yaml").write_text(TRANSFER)
    (root / "gmp.yaml").write_text(GMP)
    # seed 000's path: the base checkpoint and its transfer recipe come from a zoo (a local folder here)
    from sparse_core.zoo import publish

    (Path(base).parents[1] / "recipe_transfer_learn.yaml").write_text(TRANSFER)
    publish(Path(base).parents[1], STUB, zoo=str(root / "zoo"))
    uri, stop = start_mlflow(root / "mlflow", backend="sqlite")
    yield {"root": root, "data": data, "base": base, "uri": uri, "zoo": str(root / "zoo")}
    stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def base_params(env, **extra) -> dict:
    return {"model": env["base"], "data": str(env["data"]), "recipe": str(env["root"] / "transfer.yaml"),
            "imgsz": IMGSZ, "batch": 8, "workers": 0, "bench_iterations": 10, "mlflow_uri": env["uri"],
            "experiment": "pipelines", "cache_dir": str(env["root"] / "cache"), **extra}


def children(client, parent_run_id: str) -> dict:
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=200)
    out: dict = {}
    for r in runs:
        out.setdefault(r.data.tags["sparsepipe.step"], []).append(r)
    return out


def test_sparse_transfer_local_tracking_cache_and_recipe_change(env):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["uri"], registry_uri=env["uri"])
    name = "tiny-transfer"
    zoo = {"model": STUB, "recipe": f"{STUB}?recipe_type=transfer_learn", "zoo": env["zoo"], "register_name": name}
    first = run_local("sparse_transfer", base_params(env, **zoo), pipeline_root=env["root"] / "kfp")
    assert first["status"] == "SUCCEEDED"
    parent = client.get_run(first["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sparsepipe.run_kind"] == "pipeline"
    assert parent.data.params["register_name"] == name and parent.data.params["model"] == STUB
    kids = children(client, first["parent_run_id"])
    assert set(kids) == STEPS and all(len(v) == 1 for v in kids.values())  # 7 child runs, one per step
    for step, (run,) in kids.items():
        assert run.info.status == "FINISHED", step
        assert run.data.tags["pipeline_run_id"] == parent.data.tags["pipeline_run_id"]
        assert run.data.tags["sparsepipe.cache"] == ("skip" if step in UNCACHED else "miss"), step
    train_run = kids["sparse_train"][0]
    assert train_run.data.params["prune.type"] == "ConstantPruningModifier"  # recipe summary as params
    assert "map50" in train_run.data.metrics and "sparsity" in train_run.data.metrics
    assert len(client.get_metric_history(train_run.info.run_id, "train/box_loss")) == 2  # per epoch
    assert {"summary.json", "recipe.yaml", "recipe.full.yaml"} <= {
        a.path for a in client.list_artifacts(train_run.info.run_id)}
    assert kids["benchmark"][0].data.metrics["images_per_s"] > 0

    mv = client.get_model_version_by_alias(name, "candidate")
    reg_run = kids["register_model"][0]
    assert mv.run_id == reg_run.info.run_id and reg_run.data.tags["sparsepipe.registered"] == f"{name}/{mv.version}"
    for tag in ("recipe_sha256", "data_hash", "git_commit", "base_model", "onnx_sha256", "pipeline_run_id"):
        assert mv.tags.get(tag), tag
    assert mv.tags["base_model"] == STUB
    deploy = sorted(Path(first["pipeline_root"]).glob("sparse-transfer-*/export-model/deployment"))[-1]
    assert mv.tags["onnx_sha256"] == file_sha256(deploy / "model.onnx")
    assert mv.tags["data_hash"] == json.loads((deploy.parents[1] / "prepare-dataset/dataset/stats.json")
                                              .read_text())["content_hash"]
    assert {"map50", "sparsity", "images_per_s", "size_mb"} <= set(reg_run.data.metrics)  # champion criteria

    # the same run again: every step is served from the step cache, the version is reused, 7 child runs again
    second = run_local("sparse_transfer", base_params(env, **zoo), pipeline_root=env["root"] / "kfp")
    kids2 = children(client, second["parent_run_id"])
    assert set(kids2) == STEPS and client.get_run(second["parent_run_id"]).info.status == "FINISHED"
    caches = {s: r[0].data.tags["sparsepipe.cache"] for s, r in kids2.items()}
    assert caches == {s: "skip" if s in UNCACHED else "hit" for s in STEPS}, caches
    assert kids2["sparse_train"][0].data.metrics["map50"] == train_run.data.metrics["map50"]
    assert client.get_model_version_by_alias(name, "candidate").version == mv.version

    # a changed recipe (another epoch count) re-runs training and what follows; data and checkpoint stay cached
    third = run_local("sparse_transfer", base_params(env, recipe_args='{"num_epochs": 1}', **zoo),
                      pipeline_root=env["root"] / "kfp")
    kids3 = children(client, third["parent_run_id"])
    caches = {s: r[0].data.tags["sparsepipe.cache"] for s, r in kids3.items()}
    assert caches["fetch_checkpoint"] == caches["prepare_dataset"] == "hit"
    assert caches["sparse_train"] == caches["export_model"] == caches["register_model"] == "miss", caches
    assert len(client.get_metric_history(kids3["sparse_train"][0].info.run_id, "train/box_loss")) == 1
    new = client.get_model_version_by_alias(name, "candidate")
    assert int(new.version) == int(mv.version) + 1 and new.tags["recipe_sha256"] != mv.tags["recipe_sha256"]


def test_corrupt_dataset_fails_pipeline_with_cause(env, tmp_path):
    from mlflow.tracking import MlflowClient

    bad = tmp_path / "bad"
    shutil.copytree(env["data"], bad)
    (bad / "data.yaml").write_text((bad / "data.yaml").read_text().replace(str(env["data"]), str(bad)))
    (bad / "labels/train/00003.txt").write_text("7 0.5 0.5 0.2 0.1\n")  # class 7 in a 3-class data set
    params = base_params(env, data=str(bad), register_name="never")
    args = [a for k, v in params.items() for a in ("--param", f"{k}={v}")]
    r = subprocess.run([sys.executable, "-m", "sparse_core.cli", "pipeline", "run", "sparse_transfer", "--local",
                        "--json", "--pipeline-root", str(tmp_path / "kfp"), *args],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("sparsepipe pipeline: error: sparse_transfer failed: prepare_dataset: ")
    assert "labels/train/00003.txt:1: class id 7 out of range" in last
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["status"] == "FAILED"
    client = MlflowClient(env["uri"])
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FAILED"  # not left RUNNING
    assert "class id 7 out of range" in parent.data.tags["sparsepipe.error"]
    kids = children(client, summary["parent_run_id"])
    assert kids["prepare_dataset"][0].info.status == "FAILED"
    assert "sparse_train" not in kids and "register_model" not in kids  # nothing downstream ran


def test_sparsity_sweep_moves_champion(env):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["uri"], registry_uri=env["uri"])
    name = "tiny-sweep"
    budget = 1.0  # mAP50-95 points the champion may lose against the dense model (the dense one qualifies)
    result = run_local("sparsity_sweep", {
        **base_params(env, recipe=str(env["root"] / "gmp.yaml"), register_name=name),
        "sparsities": [0.3, 0.6], "epochs": 2, "max_map_drop": budget, "metric": "images_per_s"},
        pipeline_root=env["root"] / "kfp")
    assert result["status"] == "SUCCEEDED"
    assert client.get_run(result["parent_run_id"]).info.status == "FINISHED"
    kids = children(client, result["parent_run_id"])
    assert len(kids["sparse_train"]) == 3 and len(kids["register_model"]) == 3 and len(kids["select_champion"]) == 1
    assert sorted(r.info.run_name for r in kids["sparse_train"]) == ["sparse_train", "sparse_train@0.3",
                                                                       "sparse_train@0.6"]
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == 3
    by_target = {}
    for mv in versions:
        metrics = client.get_run(mv.run_id).data.metrics
        if mv.tags.get("baseline") == "dense":
            by_target["dense"] = (mv, metrics)
        else:
            target = 0.3 if metrics["sparsity"] < 0.45 else 0.6
            assert abs(metrics["sparsity"] - target) < 0.05, metrics["sparsity"]  # GMP reached its target
            by_target[target] = (mv, metrics)
    assert set(by_target) == {"dense", 0.3, 0.6}
    def fastest_within(points: float) -> str:
        dense_map = by_target["dense"][1]["map50_95"]
        eligible = [(m["images_per_s"], int(v.version)) for v, m in by_target.values()
                    if m["map50_95"] >= round(dense_map - points / 100, 12)]
        return str(max(eligible)[1])

    expected = fastest_within(budget)
    assert client.get_model_version_by_alias(name, "champion").version == expected
    champ_run = kids["select_champion"][0]
    assert champ_run.data.tags["sparsepipe.champion"] == f"{name}/{expected}"
    # the parent run carries the champion's headline metrics and its registered version (MLflow compare view)
    parent = client.get_run(result["parent_run_id"])
    champ_metrics = client.get_run(client.get_model_version(name, expected).run_id).data.metrics
    assert parent.data.tags["sparsepipe.registered"] == f"{name}/{expected}"
    for key in ("map50_95", "sparsity", "size_gzip_mb", "images_per_s_onnxruntime"):
        assert parent.data.metrics[key] == pytest.approx(champ_metrics[key]), key
    dense_ips = by_target["dense"][1]["images_per_s_onnxruntime"]
    assert parent.data.metrics["speedup_vs_dense_onnxruntime"] == pytest.approx(
        champ_metrics["images_per_s_onnxruntime"] / dense_ips)

    # the same versions under other budgets: none lost (only versions at least as accurate as dense), any lost
    from sparse_core import steps

    for points in (0.0, 100.0):
        res = steps.select_champion(name, constraint="", max_map_drop=points,
                                    ctx=steps.StepContext(env["uri"], "pipelines"))
        assert res["version"] == fastest_within(points), points


def test_tracking_uri_from_environment_leaves_one_run_per_step(env, tmp_path, monkeypatch):
    """In a pod MLFLOW_TRACKING_URI comes from the ConfigMap and the mlflow_uri parameter stays empty: the pipeline
    still leaves exactly one parent run and one child run per step in the whole tracking server, no other run
    (training used to open a second, unparented run in experiment 'sparsepipe')."""
    import time

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["uri"])
    client = MlflowClient(env["uri"])
    t0 = int(time.time() * 1000)
    params = base_params(env, experiment="pod-env", register_name="pod-env", cache_dir=str(tmp_path / "cache"))
    del params["mlflow_uri"]  # the pods' way: the parameter is empty, the URI is in the environment
    result = run_local("sparse_transfer", params, pipeline_root=tmp_path / "kfp")
    assert result["status"] == "SUCCEEDED"
    new = [r for exp in client.search_experiments() for r in client.search_runs([exp.experiment_id], max_results=500)
           if r.info.start_time >= t0]
    parents = [r for r in new if r.data.tags.get("sparsepipe.run_kind") == "pipeline"]
    assert [r.info.run_id for r in parents] == [result["parent_run_id"]]
    kids = children(client, result["parent_run_id"])
    assert set(kids) == STEPS and all(len(v) == 1 for v in kids.values())  # training ran (no cache): 7 steps
    assert kids["sparse_train"][0].data.tags["sparsepipe.cache"] == "miss"
    assert len(new) == 1 + len(STEPS), sorted((r.info.run_name, r.data.tags.get("mlflow.parentRunId")) for r in new)
