"""Two pipeline runs compared in the MLflow UI, as users do: the parent runs carry the headline metrics of the model
each pipeline delivered and a link to its registered version (``sparse_core.tracking.rollup``), and the experiment
is a model-training one, so MLflow 3 opens it on its runs table, not on the GenAI overview.

The parent and child runs are written by the real step functions (``open_parent_run``, ``register_model``,
``close_parent_run``) against a real ``mlflow server``; headless Chromium renders the compare page.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
from mlflow import MlflowClient

from browser import chromium, page_lines
from mlflow_server import start_mlflow
from sparse_core import steps
from sparse_core.tracking import Tracker, keys
from sparse_core.tracking.registry import register_model
from sparse_core.tracking.rollup import ui_url
from test_tracking_server import make_deploy_dir

NAME = "ui-pipeline-model"
EXP = "ui-pipelines"
BASELINE_IPS = 25.0  # the OpenVINO INT8 baseline, registered outside the pipelines
PIPELINES = {  # label -> (dense, delivered): training summary + benchmark figures
    "sweep-a": ({"map50_95": 0.46, "sparsity": 0.0, "ips": 20.0, "gz": 11.5},
                {"map50_95": 0.45, "sparsity": 0.5, "ips": 50.0, "gz": 6.5}),
    "sweep-b": ({"map50_95": 0.46, "sparsity": 0.0, "ips": 20.0, "gz": 11.5},
                {"map50_95": 0.44, "sparsity": 0.75, "ips": 80.0, "gz": 3.5}),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    uri, stop = start_mlflow(tmp_path_factory.mktemp("mlflow-ui"), backend="sqlite")
    yield uri
    stop()


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SPARSEPIPE_MLFLOW_SPOOL", str(tmp_path / "spool"))


def _model(folder: Path, seed: int, figures: dict, ort_map: float | None = None) -> tuple[Path, Path]:
    """A deployment folder with a training summary, and its benchmark.json on onnxruntime."""
    deploy = make_deploy_dir(folder, seed=seed)
    (deploy / "summary.json").write_text(json.dumps({"map50": figures["map50_95"] + 0.2, "sparsity": figures["sparsity"],
                                                     "map50_95": figures["map50_95"]}))
    if ort_map is not None:  # the exported model scored on the engines (export --data)
        info = json.loads((deploy / "export.json").read_text())
        info["accuracy"] = {"map50_95": {"onnxruntime": ort_map, "openvino": ort_map - 0.01}}
        (deploy / "export.json").write_text(json.dumps(info))
    bench = folder.with_suffix(".bench.json")
    bench.write_text(json.dumps({"engine": "onnxruntime", "images_per_s": figures["ips"], "size_mb": 12.0,
                                 "size_gzip_mb": figures["gz"], "latency_ms": {"p50": 1000 / figures["ips"]}}))
    return deploy, bench


def _pipeline(uri: str, tmp: Path, label: str, seed: int) -> str:
    """One sweep as the pipeline's steps record it: parent, dense + one sparse model registered, parent closed."""
    track = {"mlflow_uri": uri, "experiment": EXP}
    parent = steps.open_parent_run(**track, pipeline="sparsity_sweep", pipeline_run_id=f"{label}-kfp-run",
                                   params={"model": "yolov8n.yaml"})["run_id"]
    dense, sparse = PIPELINES[label]
    deploy, bench = _model(tmp / label / "dense", seed, dense)
    ctx = steps.StepContext(uri, EXP, parent)
    steps.register_model(str(deploy), str(bench), NAME, alias="", tags='{"baseline": "dense"}', ctx=ctx)
    deploy, bench = _model(tmp / label / "sparse", seed + 1, sparse, ort_map=sparse["map50_95"] - 0.005)
    steps.register_model(str(deploy), str(bench), NAME, alias="candidate", ctx=ctx)
    assert steps.close_parent_run(**track, parent_run_id=parent, state="SUCCEEDED")["status"] == "FINISHED"
    return parent


def test_compare_view_of_two_pipeline_runs_shows_headline_rows(server, tmp_path):
    with Tracker.start(server, experiment="baselines", run_name="openvino-int8") as t:
        t.log_metrics({"images_per_s": BASELINE_IPS, "images_per_s_onnxruntime": BASELINE_IPS})
    register_model(make_deploy_dir(tmp_path / "int8", seed=99), NAME, run_id=t.run_id, tracking_uri=server,
                   tags={keys.TAG_BASELINE: keys.BASELINE_INT8})
    parents = [_pipeline(server, tmp_path, label, seed) for seed, label in enumerate(PIPELINES, start=1)]

    client = MlflowClient(server, registry_uri=server)
    exp = client.get_experiment_by_name(EXP)
    assert exp.tags[keys.EXPERIMENT_KIND_TAG] == keys.EXPERIMENT_KIND
    expected = {}
    for parent, (dense, sparse) in zip(parents, PIPELINES.values()):
        run = client.get_run(parent)
        reg = [r for r in client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
               if r.data.tags.get(keys.TAG_REGISTERED) and r.data.tags.get(keys.TAG_BASELINE) != "dense"][0]
        version = reg.data.tags[keys.TAG_REGISTERED].split("/")[1]
        assert run.data.tags[keys.TAG_MODEL_URI] == f"models:/{NAME}/{version}"
        assert f"#/models/{NAME}/versions/{version}" in run.data.tags["mlflow.note.content"]
        want = {"map50_95": sparse["map50_95"], "sparsity": sparse["sparsity"], "size_gzip_mb": sparse["gz"],
                "images_per_s_onnxruntime": sparse["ips"], "map50_95_onnxruntime": sparse["map50_95"] - 0.005,
                "map50_95_openvino": sparse["map50_95"] - 0.015,
                "speedup_vs_dense_onnxruntime": sparse["ips"] / dense["ips"],
                "speedup_vs_baseline_onnxruntime": sparse["ips"] / BASELINE_IPS,
                "map50_95_drop_vs_dense": round(100 * (dense["map50_95"] - sparse["map50_95"]), 4)}
        for key, value in want.items():
            assert run.data.metrics[key] == pytest.approx(value), key
        expected[run.info.run_name] = want

    url = f"{server}/#/compare-runs?runs={json.dumps(parents)}&experiments={json.dumps([exp.experiment_id])}"
    shot = tmp_path / "compare-pipelines.png"
    lines = page_lines(chromium(url, shot, tmp_path / "profile"))
    assert "Comparing 2 Runs from 1 Experiment" in lines and set(expected) <= set(lines), lines[:80]
    section = lines[lines.index("Metrics"):lines.index("Artifacts")]
    # the rows' names (one per metric, sorted), then their values, one per run in column order
    body = section[section.index("Show diff only") + 1:]
    first_value = next(i for i, ln in enumerate(body) if re.fullmatch(r"-?[0-9.e+-]+", ln))
    names, values = body[:first_value], body[first_value:]
    assert len(values) == 2 * len(names), section
    rows = {n: values[2 * i:2 * i + 2] for i, n in enumerate(names)}
    for key in ("map50_95", "images_per_s_onnxruntime", "speedup_vs_dense_onnxruntime",
                "speedup_vs_baseline_onnxruntime", "size_gzip_mb", "sparsity", "map50_95_drop_vs_dense"):
            assert rows[key] == [f"{want[key]:g}" for want in expected.values()], (key, section)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1600, 1400)

    # sparsepipe's link to the experiment opens its runs table in the UI's model-training mode (MLflow 3.17's UI
    # starts in GenAI mode whatever the experiment kind; see rollup.ui_url), listing both pipeline runs
    lines = page_lines(chromium(ui_url(server, exp.experiment_id), tmp_path / "experiment.png",
                                tmp_path / "profile2"))
    assert lines[0].startswith("Runs - ") and "Model registry" in lines and set(expected) <= set(lines), lines[:80]
