"""Tracking and registry against a real ``mlflow server``: PostgreSQL backend store, artifacts proxied to a real
S3 server (SeaweedFS). Covers round trips, register -> ``models pull``, champion promotion, concurrent writers,
the UI compare page in headless Chromium, a secret scan, an unreachable server, and a server outage mid-run.
The sqlite default store (no server) is covered in test_tracking.py."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import numpy as np
import onnx
import pytest
from mlflow import MlflowClient
from onnx import TensorProto, helper, numpy_helper

from browser import chromium as _chromium, page_lines as _page_lines
from mlflow_server import S3_KEY_ID, S3_SECRET, MlflowServer
from servers import free_ports, start_seaweedfs
from sparse_core.errors import UserError
from sparse_core.tracking import Tracker, lineage_tags
from sparse_core.tracking.registry import list_models, promote_champion, pull_model, register_model

# fake credentials the secret scan looks for everywhere (they look real to the redactor's patterns)
AWS_KEY_ID = "AKIAQWERTYUIOPASDFGH"
AWS_SECRET = "Zx9vQw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LmNbVcXzQ"
DB_PASSWORD = "pg-Secret-Passw0rd"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "sparse_core.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SPARSEPIPE_MLFLOW_SPOOL", str(tmp_path / "spool"))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    endpoint, stop = start_seaweedfs(tmp_path_factory.mktemp("s3"))
    yield endpoint
    stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, s3):
    """mlflow server on a fresh Postgres database, artifacts proxied to s3://<bucket>/artifacts."""
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-pg"), backend="postgres", s3_endpoint=s3)
    srv.start()
    yield srv
    srv.stop()


def make_deploy_dir(path: Path, seed: int = 0, recipe: str = "version: 1.1.0\nmodifiers: []\n") -> Path:
    """A deployment folder as `sparsepipe export` writes it, with a tiny ONNX Conv model."""
    path.mkdir(parents=True, exist_ok=True)
    w = np.random.default_rng(seed).standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[np.abs(w) < 0.8] = 0.0  # sparse weights, like a pruned model
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["out"], pads=[1, 1, 1, 1])], "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 16, 16])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sparsepipe-test")
    onnx.checker.check_model(model)
    onnx.save(model, str(path / "model.onnx"))
    (path / "recipe.yaml").write_text(recipe)
    (path / "data.yaml").write_text("path: /data/synth\ntrain: images/train\nval: images/val\nnames: {0: a}\n")
    (path / "export.json").write_text(json.dumps({"imgsz": 16, "opset": 17, "data_hash": "ab" * 32,
                                                  "base": "zoo:yolov8n-coco-base"}))
    return path


def _finished_run(uri: str, metrics: dict, **tags) -> str:
    with Tracker.start(uri, experiment="registry-test", tags=tags) as t:
        t.log_metrics(metrics)
    return t.run_id


def test_run_round_trip_artifacts_land_in_s3(server, s3, tmp_path):
    (tmp_path / "layers.csv").write_text("layer,sparsity\nmodel.0.conv,0.5\n")
    with Tracker.start(server.uri, experiment="roundtrip", run_name="rt",
                       tags=lineage_tags(recipe="modifiers: []\n")) as t:
        t.log_params({"recipe": {"final_sparsity": 0.8}, "model": "yolov8n", "imgsz": 64})
        for epoch in range(4):
            t.log_metrics({"map50": 0.1 * epoch, "sparsity": 0.2 * epoch, "train/box_loss": 3 - epoch}, step=epoch)
        t.log_artifact(tmp_path / "layers.csv", artifact_path="sparsity")
        t.log_dict({"map50": 0.3}, "summary.json")
        t.set_tags({"stage": "train"})
    client = MlflowClient(server.uri)
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"recipe.final_sparsity": "0.8", "model": "yolov8n", "imgsz": "64"}
    assert {k: len(client.get_metric_history(t.run_id, k)) for k in ("map50", "sparsity", "train/box_loss")} == {
        "map50": 4, "sparsity": 4, "train/box_loss": 4}
    assert run.data.tags["stage"] == "train" and len(run.data.tags["recipe_sha256"]) == 64
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    bucket, prefix = server.artifacts[len("s3://"):].split("/", 1)
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=s3, aws_access_key_id=S3_KEY_ID,
                                           aws_secret_access_key=S3_SECRET, region_name="us-east-1")
            .list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert any(k.endswith(f"{t.run_id}/artifacts/sparsity/layers.csv") for k in keys), keys
    assert any(k.endswith(f"{t.run_id}/artifacts/summary.json") for k in keys)


def test_register_then_cli_pull_gives_identical_model(server, tmp_path):
    deploy = make_deploy_dir(tmp_path / "deploy")
    run_id = _finished_run(server.uri, {"map50": 0.5, "sparsity": 0.6, "images_per_s": 100.0},
                           **lineage_tags(recipe=deploy / "recipe.yaml"))
    res = register_model(deploy, "tiny-det", run_id=run_id, alias="candidate", tracking_uri=server.uri,
                         tags={"task": "detect"})
    assert res["run_id"] == run_id and res["model_uri"] == f"models:/tiny-det/{res['version']}"
    client = MlflowClient(server.uri, registry_uri=server.uri)
    mv = client.get_model_version("tiny-det", res["version"])
    assert mv.run_id == run_id
    assert mv.tags["recipe_sha256"] == _sha(deploy / "recipe.yaml")
    assert mv.tags["onnx_sha256"] == _sha(deploy / "model.onnx")
    assert mv.tags["data_hash"] == "ab" * 32 and mv.tags["base_model"] == "zoo:yolov8n-coco-base"
    assert mv.tags["git_commit"] and mv.tags["task"] == "detect"
    assert client.get_model_version_by_alias("tiny-det", "candidate").version == res["version"]
    # the model is in the run that produced the checkpoint, as a loadable ONNX-flavor MLflow model
    assert [m.model_id for m in client.get_run(run_id).outputs.model_outputs]

    out = tmp_path / "pulled"
    proc = _cli("models", "pull", "tiny-det@candidate", "--out", str(out), "--tracking-uri", server.uri, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["version"] == res["version"]
    assert _sha(out / "model.onnx") == _sha(deploy / "model.onnx")
    for f in ("recipe.yaml", "data.yaml", "export.json"):
        assert (out / f).read_bytes() == (deploy / f).read_bytes()
    # pulled twice (by version, then latest) into the same folder: replaced atomically, same bytes
    assert _sha(pull_model(f"tiny-det/{res['version']}", out, tracking_uri=server.uri) / "model.onnx") == \
        _sha(deploy / "model.onnx")
    assert _sha(pull_model("tiny-det", out, tracking_uri=server.uri) / "model.onnx") == _sha(deploy / "model.onnx")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pulled")]  # no temp leftovers
    import onnxruntime as ort

    x = np.ones((1, 3, 16, 16), np.float32)
    a = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    b = ort.InferenceSession(str(deploy / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    np.testing.assert_array_equal(a[0], b[0])

    rows = [r for r in list_models(tracking_uri=server.uri) if r["name"] == "tiny-det"]
    assert rows[0]["aliases"] == ["candidate"] and rows[0]["metrics"]["images_per_s"] == 100.0

    # bad input: UserError; from the CLI one line on stderr and exit 2; nothing of the user's is touched
    with pytest.raises(UserError, match="not found"):
        pull_model("tiny-det@nope", tmp_path / "new", tracking_uri=server.uri)
    with pytest.raises(UserError, match="NAME@ALIAS"):
        pull_model("tiny-det@@x", tmp_path / "new", tracking_uri=server.uri)
    assert not (tmp_path / "new").exists()
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    proc = _cli("models", "pull", "tiny-det", "--out", str(tmp_path / "occupied"), "--tracking-uri", server.uri)
    assert proc.returncode == 2 and "not an earlier" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert (tmp_path / "occupied" / "notes.txt").read_text() == "mine"


def test_promote_champion_picks_fastest_version_within_accuracy_budget(server, tmp_path):
    deploy = make_deploy_dir(tmp_path / "deploy", seed=1)
    runs = {  # version order: dense baseline, then pruned ones
        "dense": {"map50": 0.60, "sparsity": 0.0, "images_per_s": 50.0},
        "s50": {"map50": 0.57, "sparsity": 0.5, "images_per_s": 70.0},
        "s80": {"map50": 0.50, "sparsity": 0.8, "images_per_s": 90.0},
    }
    version = {}
    for label, metrics in runs.items():
        version[label] = register_model(deploy, "promo", run_id=_finished_run(server.uri, metrics),
                                        tracking_uri=server.uri)["version"]
    budget = 0.9 * runs["dense"]["map50"]
    expected = max((m["images_per_s"], lbl) for lbl, m in runs.items() if m["map50"] >= budget)[1]
    res = promote_champion("promo", "images_per_s", constraint="map50>=0.9*dense", tracking_uri=server.uri)
    assert res["version"] == version[expected] and res["previous"] is None
    assert sorted(res["eligible"], key=int) == sorted((version[lbl] for lbl, m in runs.items()
                                                       if m["map50"] >= budget), key=int)
    client = MlflowClient(server.uri, registry_uri=server.uri)
    assert client.get_model_version_by_alias("promo", "champion").version == version[expected]
    # no constraint: the fastest overall; lower-is-better flips the choice
    assert promote_champion("promo", "images_per_s", tracking_uri=server.uri)["version"] == version["s80"]
    res = promote_champion("promo", "images_per_s", higher_is_better=False, tracking_uri=server.uri)
    assert res["version"] == version["dense"] and res["previous"] == version["s80"]
    with pytest.raises(UserError, match="no version"):
        promote_champion("promo", "images_per_s", constraint="map50>=2*dense", tracking_uri=server.uri)
    with pytest.raises(UserError, match="expected METRIC OP"):
        promote_champion("promo", "images_per_s", constraint="map50 ~ dense", tracking_uri=server.uri)
    assert client.get_model_version_by_alias("promo", "champion").version == version["dense"]  # unchanged


WRITER = textwrap.dedent("""
    import sys, time
    from sparse_core.tracking import Tracker
    uri, worker, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with Tracker.start(uri, experiment="concurrent", run_name=f"writer-{worker}") as t:
        t.log_params({"worker": worker})
        for step in range(steps):
            t.log_metrics({"loss": 1.0 / (step + 1), "map50": step / steps, "worker": worker}, step=step)
    print(t.run_id)
""")


def test_four_concurrent_writers_lose_no_point(server):
    steps = 40
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, server.uri, str(i), str(steps)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    run_ids = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        run_ids.append(out.strip().splitlines()[-1])
    assert len(set(run_ids)) == 4
    client = MlflowClient(server.uri)
    for i, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["worker"] == str(i)
        for key in ("loss", "map50", "worker"):
            hist = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in hist) == list(range(steps)), (run_id, key, len(hist))
        assert {m.value for m in client.get_metric_history(run_id, "worker")} == {float(i)}


def test_unreachable_server_is_a_clear_error_within_30s(monkeypatch):
    port = free_ports(1)[0]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.delenv("SPARSEPIPE_MLFLOW_CONNECT_TIMEOUT", raising=False)
    cli = subprocess.Popen([sys.executable, "-m", "sparse_core.cli", "models", "list", "--tracking-uri", uri],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    with pytest.raises(UserError, match="not reachable"):
        Tracker.start(uri)
    assert time.monotonic() - t0 <= 30
    _, err = cli.communicate(timeout=60)
    assert time.monotonic() - t0 <= 35  # includes the CLI's interpreter start
    assert cli.returncode == 2 and "not reachable" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_no_secret_in_params_tags_artifacts_or_logs(server, s3, tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    caplog.set_level(logging.DEBUG)
    secrets = [AWS_KEY_ID, AWS_SECRET, DB_PASSWORD, S3_SECRET]
    db_uri = f"postgresql://mlflow:{DB_PASSWORD}@db.internal:5432/mlflow"
    # a tracking URI with credentials in it: must work and never be echoed
    uri = server.uri.replace("http://", f"http://admin:{DB_PASSWORD}@")
    recipe = f"# pulled from s3://{AWS_KEY_ID}:{AWS_SECRET}@zoo/recipes\nmodifiers: []\n"
    deploy = make_deploy_dir(tmp_path / "deploy", seed=2, recipe=recipe)
    (tmp_path / "train.log").write_text(f"connecting to {db_uri}\naws_secret_access_key={AWS_SECRET}\n")
    with Tracker.start(uri, experiment="secrets", run_name=f"run {db_uri}",
                       tags={"source": db_uri, "aws_secret_access_key": AWS_SECRET}) as t:
        t.log_params({"args": {"data": f"s3://{AWS_KEY_ID}:{AWS_SECRET}@bucket/data.yaml", "db": db_uri,
                               "aws_secret_access_key": AWS_SECRET, "cmd": f"train --key {AWS_SECRET}"}})
        t.set_tags({"env": f"AWS_ACCESS_KEY_ID={AWS_KEY_ID}"})
        t.log_text(f"store: {db_uri}\nkey: {AWS_KEY_ID}\n", "config/resolved.yaml")
        t.log_dict({"db": db_uri, "secret": AWS_SECRET}, "summary.json")
        t.log_artifact(tmp_path / "train.log")
        t.log_artifact(deploy, artifact_path="export")
        t.log_metrics({"map50": 0.5})
    reg = register_model(deploy, "secret-scan", run_id=t.run_id, alias="candidate", tracking_uri=uri,
                         tags={"source": db_uri})
    pulled = pull_model("secret-scan@candidate", tmp_path / "pulled", tracking_uri=uri)
    list_models(tracking_uri=uri)

    client = MlflowClient(server.uri, registry_uri=server.uri)
    run = client.get_run(t.run_id)
    mv = client.get_model_version("secret-scan", reg["version"])
    texts = {"run_name": run.info.run_name, **{f"param {k}": v for k, v in run.data.params.items()},
             **{f"tag {k}": v for k, v in run.data.tags.items()}, **{f"version tag {k}": v for k, v in mv.tags.items()}}
    assert run.data.params["args.aws_secret_access_key"] == "***" and "db.internal" in run.data.params["args.db"]
    # every object the server stored in S3 (run artifacts and the registered model), and the pulled folder
    s3c = boto3.client("s3", endpoint_url=s3, aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET,
                       region_name="us-east-1")
    bucket = server.artifacts[len("s3://"):].split("/", 1)[0]
    objects = [o["Key"] for o in s3c.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(t.run_id in k and k.endswith("train.log") for k in objects)
    assert any(k.endswith("extra_files/recipe.yaml") for k in objects)
    for key in objects:
        texts[f"s3 {key}"] = s3c.get_object(Bucket=bucket, Key=key)["Body"].read().decode("latin-1")
    for f in pulled.iterdir():
        texts[f"pulled {f.name}"] = f.read_bytes().decode("latin-1")
    out, err = capfd.readouterr()
    texts.update({"log records": caplog.text, "stdout": out, "stderr": err, "server log": server.log_tail(10**7)})
    leaks = [(where, s) for where, text in texts.items() for s in secrets if s in text]
    assert not leaks, leaks
    assert "***" in texts[f"pulled recipe.yaml"]  # redacted, not dropped


def test_mlflow_ui_compare_page_lines_up_sparsity_and_map50(server, tmp_path):
    """Two runs logged with the standard keys: the UI's compare page (headless Chromium) shows a sparsity row and
    a map50 row with each run's value; a screenshot of the page is written too."""
    logged = {"dense": {"map50": 0.61, "sparsity": 0.0, "images_per_s": 50.0},
              "pruned-80": {"map50": 0.58, "sparsity": 0.8, "images_per_s": 82.0}}
    run_ids = []
    for name, metrics in logged.items():
        with Tracker.start(server.uri, experiment="ui-compare", run_name=name) as t:
            t.log_params({"final_sparsity": metrics["sparsity"]})
            t.log_metrics(metrics)
        run_ids.append(t.run_id)
    exp_id = MlflowClient(server.uri).get_experiment_by_name("ui-compare").experiment_id
    url = f"{server.uri}/#/compare-runs?runs={json.dumps(run_ids)}&experiments={json.dumps([exp_id])}"
    shot = tmp_path / "compare.png"
    dom = _chromium(url, shot, tmp_path / "profile")
    lines = _page_lines(dom)
    assert "Comparing 2 Runs from 1 Experiment" in lines and {"dense", "pruned-80"} <= set(lines)
    # Metrics section: the metric names (one row each), then each row's values, one per run in column order
    section = lines[lines.index("Metrics"):lines.index("Artifacts")]
    names = [ln for ln in section if ln in logged["dense"]]
    values = section[section.index(names[-1]) + 1:]
    assert {"sparsity", "map50"} <= set(names)
    rows = {n: values[2 * i:2 * i + 2] for i, n in enumerate(names)}
    for key in ("sparsity", "map50"):
        assert rows[key] == [f"{logged[name][key]:g}" for name in ("dense", "pruned-80")], rows
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1600, 1400)
    assert len(png) > 20_000  # a rendered page, not a blank one


def test_server_down_20s_mid_run_buffered_metrics_arrive(server, tmp_path, caplog):
    """Last in the module: kills the shared server and starts it again on the same port and database."""
    caplog.set_level(logging.WARNING, logger="sparsepipe.tracking")
    t = Tracker.start(server.uri, experiment="outage")
    (tmp_path / "curve.csv").write_text("epoch,map50\n0,0.1\n")
    step = 0
    for _ in range(5):
        t.log_metrics({"map50": 0.01 * step, "sparsity": 0.5}, step=step)
        step += 1
    assert t.pending() == 0
    server.kill()
    down_at = time.monotonic()
    while time.monotonic() - down_at < 20:  # the run keeps training while the server is gone
        t.log_metrics({"map50": 0.01 * step, "sparsity": 0.5}, step=step)
        step += 1
        time.sleep(1.0)
    t.log_artifact(tmp_path / "curve.csv")
    t.set_tags({"during_outage": "yes"})
    spool = tmp_path / "spool" / f"{t.run_id}.jsonl"
    assert t.pending() >= 2 * (step - 5) and spool.is_file()
    spooled = [json.loads(line) for line in spool.read_text().splitlines()]
    assert sum(r["type"] == "metric" for r in spooled) == 2 * (step - 5)
    assert "not answering" in caplog.text
    server.start()
    t.log_metrics({"map50": 0.99, "sparsity": 0.5}, step=step)
    step += 1
    t.finish()
    client = MlflowClient(server.uri)
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["during_outage"] == "yes"
    for key in ("map50", "sparsity"):
        assert sorted(m.step for m in client.get_metric_history(t.run_id, key)) == list(range(step))
    assert "curve.csv" in {a.path for a in client.list_artifacts(t.run_id)}
    assert not spool.exists() and "is back" in caplog.text


def test_train_export_benchmark_register_pull_end_to_end(server, tmp_path):
    """The real CLI chain logs into ONE run (the run that trained the model) and the registry gives it back."""
    from sparse_core.data.synth import synth_dataset

    data = synth_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=64, seed=5)
    recipe = tmp_path / "gmp.yaml"
    recipe.write_text(textwrap.dedent("""\
        version: 1.1.0
        final_sparsity: 0.5
        modifiers:
          - !EpochRangeModifier {start_epoch: 0, end_epoch: 2}
          - !GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.05, final_sparsity: eval(final_sparsity),
                                start_epoch: 0, end_epoch: 1, update_frequency: 0.5}
        """))
    uri = ["--mlflow", server.uri]
    res = _cli("train", "--model", "yolov8n.yaml", "--data", str(data), "--recipe", str(recipe), "--imgsz", "64",
               "--batch", "4", "--workers", "0", "--project", str(tmp_path), "--name", "run", "--no-plots", "--json",
               *uri, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    run_id = summary["mlflow_run_id"]
    deploy = tmp_path / "deploy"
    res = _cli("export", "--weights", summary["weights"]["best"], "--out", str(deploy), "--register", "e2e-model",
               "--alias", "candidate", "--json", *uri, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    exported = json.loads(res.stdout.strip().splitlines()[-1])
    assert exported["mlflow_run_id"] == run_id and exported["registered"]["run_id"] == run_id
    res = _cli("benchmark", str(deploy), "--iterations", "5", "--warmup", "1", "--json", *uri)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["mlflow_run_id"] == run_id

    client = MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("map50", "map50_95", "sparsity", "images_per_s", "latency_p50_ms", "latency_p90_ms", "size_mb",
                "size_gzip_mb"):
        assert key in run.data.metrics, key
    assert len(client.get_metric_history(run_id, "sparsity")) >= 2  # per epoch
    for key in ("recipe.var.final_sparsity", "prune.final_sparsity", "train.imgsz", "model.family", "data_hash"):
        assert key in run.data.params, key
    for tag in ("recipe_sha256", "git_commit", "data_hash", "base_model"):
        assert run.data.tags.get(tag), tag
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"recipe", "summary.json", "sparsity", "deployment"} <= artifacts
    version = client.get_model_version_by_alias("e2e-model", "candidate")
    assert version.tags.get("recipe_sha256") == run.data.tags["recipe_sha256"]
    res = _cli("models", "pull", "e2e-model@candidate", "--out", str(tmp_path / "pulled"), "--tracking-uri",
               server.uri)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _sha(tmp_path / "pulled" / "model.onnx") == _sha(deploy / "model.onnx")
