"""Tracking without a server: the sqlite default store (README demo), redaction, lineage tags, the disabled
tracker, the spool file, and switching off Ultralytics' own MLflow callback."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
from mlflow import MlflowClient
from onnx import TensorProto, helper

from sparse_core.errors import UserError
from sparse_core.tracking import METRIC_KEYS, Tracker, lineage_tags, redact
from sparse_core.tracking.registry import list_models
from sparse_core.tracking.tracker import flatten, metric_key

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("KFP_RUN_ID", raising=False)
    monkeypatch.delenv("SPARSEPIPE_PIPELINE_RUN_ID", raising=False)
    monkeypatch.setenv("SPARSEPIPE_MLFLOW_SPOOL", str(tmp_path / "spool"))


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    """One sqlite store for the module: creating one runs MLflow's migrations (~5 s)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def test_redact_masks_uri_passwords_aws_keys_and_secret_values(monkeypatch):
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRETKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    cases = {
        "postgresql://mlflow:pg-Pass_123@db:5432/mlflow": ["pg-Pass_123"],
        "s3 key AKIAIOSFODNN7EXAMPLE in a log line": ["AKIAIOSFODNN7EXAMPLE"],
        f"--secret {secret} --epochs 3": [secret],
        'aws_secret_access_key = "abc/def+ghi123"': ["abc/def+ghi123"],
        "https://h/o?X-Amz-Credential=AKIA0000/x&X-Amz-Signature=deadbeef99": ["deadbeef99", "AKIA0000"],
        "db: {password: hunter2hunter2}": ["hunter2hunter2"],
    }
    for text, secrets in cases.items():
        out = redact(text)
        assert not any(s in out for s in secrets), out
        assert "***" in out
    # innocent text is left alone: no password in the URI, a 'tokenizer' is not a token, the working directory
    for text in ("http://user@host:5000/x", "tokenizer: bert", "sqlite:///" + os.getcwd() + "/mlflow.db",
                 "lr0=0.01 epochs=3 map50=0.5"):
        assert redact(text) == text


def test_flatten_and_metric_names():
    assert flatten({"prune": {"final_sparsity": 0.8, "start": 0}, "imgsz": 64}) == {
        "prune.final_sparsity": 0.8, "prune.start": 0, "imgsz": 64}
    assert metric_key("metrics/mAP50(B)") == "metrics/mAP50B"
    assert metric_key("lr/pg0") == "lr/pg0"
    assert metric_key("a*b") == "a_b"
    assert {"map50", "map50_95", "sparsity", "images_per_s", "latency_p50_ms", "latency_p90_ms", "size_mb",
            "size_gzip_mb"} <= set(METRIC_KEYS)


def test_lineage_tags(tmp_path, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("version: 1.1.0\nmodifiers: []\n")
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-42")
    tags = lineage_tags(recipe=recipe, data_hash="d" * 64, base="s3://ak:pw-secret-1@zoo/yolov8n.pt")
    assert tags["recipe_sha256"] == hashlib.sha256(recipe.read_bytes()).hexdigest()
    assert tags["recipe_sha256"] == lineage_tags(recipe=recipe.read_text())["recipe_sha256"]  # text == file
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert tags["git_commit"].split("+")[0] == head
    assert tags["pipeline_run_id"] == "kfp-run-42"
    assert tags["data_hash"] == "d" * 64
    assert "pw-secret-1" not in tags["base_model"] and tags["base_model"].endswith("@zoo/yolov8n.pt")
    monkeypatch.delenv("KFP_RUN_ID")
    monkeypatch.setenv("SPARSEPIPE_PIPELINE_RUN_ID", "local-7")
    assert lineage_tags()["pipeline_run_id"] == "local-7"


def test_disabled_tracker_is_a_valid_no_op(tmp_path):
    t = Tracker.start(None)
    assert not t.enabled and t.run_id is None
    with t:
        t.log_params({"a": 1})
        t.log_metrics({"map50": 0.5}, step=1)
        t.log_text("x", "x.txt")
        t.log_dict({"a": 1}, "a.json")
        t.set_tags({"k": "v"})
        t.log_artifact(tmp_path / "does-not-matter")
    assert not (tmp_path / "spool").exists()


def test_sqlite_default_store_logs_params_metrics_artifacts_tags(tmp_path, monkeypatch, sqlite_uri):
    uri = sqlite_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the env var alone turns tracking on
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("modifiers: []\n")
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "model.onnx").write_bytes(os.urandom(256))
    with Tracker.start(None, experiment="unit", run_name="sqlite-run", tags=lineage_tags(recipe=recipe)) as t:
        assert t.enabled
        t.log_params({"prune": {"final_sparsity": 0.8}, "imgsz": 64, "long": "x" * 7000})
        t.log_params({"imgsz": 128})  # params are write-once: the first value stays
        for step in range(3):
            t.log_metrics({"metrics/mAP50(B)": 0.1 * step, "sparsity": 0.2 * step}, step=step)
        t.log_artifact(recipe)
        t.log_artifact(tmp_path / "deploy", artifact_path="export")
        t.log_dict({"map50": 0.4}, "summary.json")
        t.log_text("a,b\n1,2\n", "sparsity/layers.csv")
        t.set_tags({"stage": "unit"})
    client = MlflowClient(uri)
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "sqlite-run"
    assert run.data.params["prune.final_sparsity"] == "0.8"
    assert run.data.params["imgsz"] == "64"
    assert len(run.data.params["long"]) == 6000
    assert [m.value for m in client.get_metric_history(t.run_id, "metrics/mAP50B")] == pytest.approx([0, 0.1, 0.2])
    assert len(client.get_metric_history(t.run_id, "sparsity")) == 3
    assert run.data.tags["stage"] == "unit" and run.data.tags["recipe_sha256"] == lineage_tags(recipe=recipe)[
        "recipe_sha256"]
    arts = {a.path for a in client.list_artifacts(t.run_id)} | {
        a.path for d in ("export", "export/deploy", "sparsity") for a in client.list_artifacts(t.run_id, d)}
    assert {"recipe.yaml", "summary.json", "export/deploy/model.onnx", "sparsity/layers.csv"} <= arts
    got = Path(client.download_artifacts(t.run_id, "export/deploy/model.onnx", str(tmp_path / "dl")))
    assert got.read_bytes() == (tmp_path / "deploy" / "model.onnx").read_bytes()  # binaries are not touched
    assert not (tmp_path / "spool" / t.run_id).exists()  # staging copies cleaned up
    with Tracker.start(uri, experiment="unit", run_name="step", parent_run_id=t.run_id) as child:
        child.log_metrics({"images_per_s": 12.5})
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == t.run_id


def test_sqlite_default_store_register_and_cli_pull(tmp_path, sqlite_uri):
    """The README demo path: no server, `models register/pull/list` on the sqlite file store."""
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["out"])], "relu",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(deploy / "model.onnx"))
    (deploy / "recipe.yaml").write_text("modifiers: []\n")
    import torch

    torch.save({"model": torch.nn.Conv2d(3, 3, 1)}, deploy / "model.pt")  # a checkpoint the safe loader accepts
    with Tracker.start(sqlite_uri, run_name="demo") as t:
        t.log_metrics({"map50": 0.3, "sparsity": 0.5})
    env = {**os.environ, "MLFLOW_TRACKING_URI": sqlite_uri}
    cli = [sys.executable, "-m", "sparse_core.cli", "models"]
    reg = subprocess.run([*cli, "register", str(deploy), "--name", "demo", "--run-id", t.run_id, "--alias",
                          "candidate", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert reg.returncode == 0, reg.stderr[-2000:]
    version = json.loads(reg.stdout.strip().splitlines()[-1])["version"]
    out = tmp_path / "pulled"
    pull = subprocess.run([*cli, "pull", "demo@candidate", "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert pull.returncode == 0, pull.stderr[-2000:]
    for f in ("model.onnx", "model.pt", "recipe.yaml"):
        assert (out / f).read_bytes() == (deploy / f).read_bytes()
    assert json.loads((out / "registry.json").read_text())["version"] == version
    assert list_models(tracking_uri=sqlite_uri)[-1]["aliases"] == ["candidate"]


def test_failed_block_marks_run_failed_and_resume_continues(sqlite_uri):
    uri = sqlite_uri
    with pytest.raises(RuntimeError):
        with Tracker.start(uri) as t:
            t.log_metrics({"loss": 1.0}, step=0)
            raise RuntimeError("training crashed")
    client = MlflowClient(uri)
    assert client.get_run(t.run_id).info.status == "FAILED"
    with Tracker.start(uri, run_id=t.run_id) as t2:  # resume: same run, RUNNING again, then FINISHED
        assert t2.run_id == t.run_id
        assert client.get_run(t.run_id).info.status == "RUNNING"
        t2.log_metrics({"loss": 0.5}, step=1)
    assert client.get_run(t.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(t.run_id, "loss")] == [0, 1]
    with pytest.raises(UserError, match="run 0000"):
        Tracker.start(uri, run_id="0000deadbeef")


def test_spool_left_by_a_dead_process_is_sent_on_resume(tmp_path, sqlite_uri):
    """A run whose process died with points still spooled gets them when the run is resumed."""
    uri = sqlite_uri
    t = Tracker.start(uri)
    spool = tmp_path / "spool" / f"{t.run_id}.jsonl"
    spool.parent.mkdir(parents=True)
    lines = [{"type": "metric", "key": "map50", "value": 0.1 * i, "timestamp": 1_700_000_000_000 + i, "step": i}
             for i in range(5)]
    spool.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"type": "metr')  # torn last line
    with Tracker.start(uri, run_id=t.run_id):
        pass
    assert [m.step for m in MlflowClient(uri).get_metric_history(t.run_id, "map50")] == list(range(5))
    assert not spool.exists()


def test_ultralytics_mlflow_callback_disabled_without_touching_settings(tmp_path):
    """Ultralytics registers its MLflow callback by default; after disable_ultralytics_mlflow() no trainer has it,
    and the user's Ultralytics settings file is byte-identical (nothing persisted)."""
    script = textwrap.dedent(f"""
        import json, os
        from sparse_core.data.synth import synth_dataset
        from ultralytics.models.yolo.detect import DetectionTrainer
        from ultralytics.utils import SETTINGS
        from sparse_core.tracking import disable_ultralytics_mlflow

        data = synth_dataset({str(tmp_path / 'data')!r}, n_train=2, n_val=1, imgsz=32)
        before = open(SETTINGS.file, 'rb').read()

        def trainer(name):
            return DetectionTrainer(overrides=dict(model='yolov8n.yaml', data=str(data), imgsz=32, epochs=1,
                                    device='cpu', plots=False, project={str(tmp_path / 'runs')!r}, name=name))

        def ul_mlflow(tr):
            return sorted(k for k, fs in tr.callbacks.items() for f in fs
                          if f.__module__ == 'ultralytics.utils.callbacks.mlflow')

        t1 = trainer('a')
        had = ul_mlflow(t1)
        disable_ultralytics_mlflow(t1)
        print(json.dumps(dict(default=SETTINGS['mlflow'], had=had, stripped=ul_mlflow(t1),
                              new=ul_mlflow(trainer('b')), settings_same=open(SETTINGS.file, 'rb').read() == before)))
    """)
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "ulcfg"), "YOLO_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["default"] is True  # fresh settings: Ultralytics' MLflow integration is on by default
    assert {"on_pretrain_routine_end", "on_train_end", "on_fit_epoch_end"} <= set(res["had"])
    assert res["stripped"] == [] and res["new"] == []
    assert res["settings_same"]
