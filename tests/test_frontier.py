"""benchmarks/frontier.py end to end at toy size: dense, structured 50% + KD with and without QAT, the same speed
with a sensitivity-generated recipe, the OpenVINO INT8 baseline; every variant scored and timed, one MLflow run each, the table and the per-engine Pareto plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import frontier  # noqa: E402


def test_frontier_quick_toy_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SPARSEPIPE_MLFLOW_SPOOL", str(tmp_path / "spool"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert frontier.main(["--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                          "--n-train", "24", "--n-val", "8", "--imgsz", "64", "--batch", "8", "--variants", "s50",
                          "--generated", "0.5",
                          "--epochs", "1", "--prune-epochs", "2", "--calib", "4",
                          "--seconds", "0.2", "--speed-imgsz", "64",
                          "--engines", "onnxruntime", "openvino", "--mlflow", uri]) == 0
    res = json.loads((tmp_path / "out" / "frontier-quick.json").read_text())
    rows = res["models"]["yolov8n"]
    assert set(rows) == {"dense", "dense-ft", "s50-kd", "s50-kd-qat", "g50-kd", "g50-kd-qat", "ov-int8-ptq"}
    for variant, row in rows.items():
        assert 0.0 <= row["map50_95_onnxruntime"] <= 1.0, variant
        assert row["images_per_s_onnxruntime"] > 0 and row["images_per_s_openvino"] > 0, variant
        assert row["size_gzip_mb"] > 0
    assert rows["dense"]["speedup_vs_dense_onnxruntime"] == 1.0
    assert rows["ov-int8-ptq"]["speedup_vs_baseline_openvino"] == 1.0
    assert rows["s50-kd"]["conv_params"] < rows["dense"]["conv_params"] / 2  # thinned: fewer channels
    assert rows["dense-ft"]["conv_params"] == rows["dense"]["conv_params"]  # the control: same recipe at 0%
    # the generated variant: channels placed by the analysis at the uniform 50% plan's predicted latency
    from sparse_core.sensitivity.latency import predict

    recipe = (tmp_path / "work" / "quick" / "recipes" / "yolov8n-g50.yaml").read_text()
    a = json.loads((tmp_path / "work" / "quick" / "analysis" / "yolov8n" / "analysis.json").read_text())
    uniform_ms = predict(a["latency"]["onnxruntime"], a["structure"], {g["id"]: g["segments"] for g in a["groups"]},
                         {g["id"]: 0.5 for g in a["groups"]})
    assert f"# target: {uniform_ms:g} ms on onnxruntime" in recipe and "!PerLayerDistillationModifier" in recipe
    assert rows["g50-kd"]["conv_params"] < rows["dense"]["conv_params"]
    assert rows["s50-kd-qat"]["size_gzip_mb"] < rows["s50-kd"]["size_gzip_mb"]  # INT8 weights
    md = (tmp_path / "out" / "frontier-quick.md").read_text()
    assert all(f"| yolov8n | {v} |" in md for v in rows)
    assert "- yolov8n: dense mAP50-95 " in md and "OpenVINO INT8 baseline drop vs the dense model it quantizes" in md
    png = (tmp_path / "out" / "frontier-quick.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("frontier")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f"yolov8n-{v}" for v in rows)
    assert all("images_per_s_onnxruntime" in r.data.metrics for r in runs)
