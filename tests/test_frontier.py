"""benchmarks/frontier.py end to end at toy size, resumable through its benchmark zoo: dense, dense-ft, structured
50% + KD with and without QAT, the width-matched smaller dense controls (plain and distilled), the OpenVINO INT8
baseline; every model keyed by its inputs and published (xz) to the zoo, scored, timed, one MLflow run each; a
second run trains nothing and finds the same models; a changed input is a new model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_zoo  # noqa: E402
import frontier  # noqa: E402



def toy(tmp_path: Path, out: str, prune_epochs: int = 2, *more: str) -> list[str]:
    return ["--quick", "--n-train", "24", "--n-val", "8", "--imgsz", "64", "--batch", "8", "--variants", "s50",
            "--controls", "s50", "--epochs", "1", "--prune-epochs", str(prune_epochs), "--qat-epochs", "2",
            "--calib", "4", "--seconds", "0.2", "--match-seconds", "0.1", "--speed-imgsz", "64",
            "--engines", "onnxruntime", "openvino", "--work", str(tmp_path / "work"), "--zoo", str(tmp_path / "zoo"),
            "--out", str(tmp_path / out), "--mlflow", f"sqlite:///{tmp_path / 'mlflow.db'}", *more]


def test_frontier_toy_run_resumes_from_its_zoo(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SPARSEPIPE_MLFLOW_SPOOL", str(tmp_path / "spool"))
    monkeypatch.setenv("SPARSEPIPE_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    zoo, out = tmp_path / "zoo", tmp_path / "out"
    assert frontier.main(toy(tmp_path, "out")) == 0
    res = json.loads((out / "frontier-quick.json").read_text())
    rows = res["models"]["yolov8n"]
    # at toy size one more dense stage gains nothing: dense is the reference, dense-ft its budget control
    kinds = {"dense": "dense", "dense-ft": "control", "s50-kd": "variant", "s50-kd-qat": "variant",
             "small-s50": "small", "small-s50-kd": "small", "ov-int8-ptq": "baseline"}
    assert {v: r["kind"] for v, r in rows.items()} == kinds
    for variant, row in rows.items():
        assert 0.0 <= row["map50_95_onnxruntime"] <= 1.0, variant
        assert row["images_per_s_onnxruntime"] > 0 and row["images_per_s_openvino"] > 0, variant
        assert row["size_gzip_mb"] > 0
    assert res["trained"] == 6 and res["reference"] == {"yolov8n": "dense"}
    assert not any("not in the zoo" in n or "wait" in n for n in res["notes"])
    # pruned from the reference; dense-ft and the smaller dense controls get the variant's whole budget
    assert [r["epochs_total"] for r in rows.values()] == [1, 3, 3, 5, 3, 3, 1]
    assert rows["dense"]["speedup_vs_dense_onnxruntime"] == 1.0
    assert rows["ov-int8-ptq"]["speedup_vs_baseline_openvino"] == 1.0
    assert rows["s50-kd"]["conv_params"] < rows["dense"]["conv_params"] / 2  # thinned: fewer channels
    assert rows["dense-ft"]["conv_params"] == rows["dense"]["conv_params"]  # the control: same recipe at 0%
    assert rows["small-s50"]["width"] == rows["small-s50-kd"]["width"] < 0.25  # one width per variant, narrower
    assert rows["small-s50"]["matches"] == "s50-kd" and rows["s50-kd-qat"]["size_gzip_mb"] < rows["s50-kd"]["size_gzip_mb"]

    # every trained model is a verified zoo entry keyed by its inputs, with its provenance and curve
    for name, row in rows.items():
        if row["kind"] == "baseline":
            continue
        entry = bench_zoo.lookup(zoo, row["stub"])
        prov = bench_zoo.provenance(entry)
        assert row["stub"].endswith(f"{name}-{bench_zoo.key_of(prov['spec'])[:16]}"), name
        assert (zoo / row["stub"][4:] / "model.pt.xz").is_file() and (entry / "model.pt").is_file()
        assert prov["spec"]["data"].startswith(res["data"].split("data hash ")[1]), name
        assert len(prov["curve"]) == (prov["spec"]["epochs"] or prov["spec"]["recipe_args"]["num_epochs"]), name
    small = bench_zoo.provenance(bench_zoo.lookup(zoo, rows["small-s50-kd"]["stub"]))
    assert small["spec"]["matches"].startswith(rows["s50-kd"]["key"])
    assert small["width_match"]["engine"] == "openvino" and small["teacher"] == rows["dense"]["stub"]

    md = (out / "frontier-quick.md").read_text()
    assert all(f"| yolov8n | {v} |" in md for v in rows)
    assert "- yolov8n dense from scratch: 1 epochs" in md and "- yolov8n s50-kd vs small-s50 (width" in md
    assert "- yolov8n dense-ft: " in md and "over dense from 2 more epochs at 0% sparsity" in md
    assert "- yolov8n reference: dense (the stage before the first one that gains < 0.5 point" in md
    for png in ("frontier-quick.png", "frontier-quick-curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("frontier").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f"yolov8n-{v}" for v in rows)
    assert all("images_per_s_onnxruntime" in r.data.metrics for r in runs)

    # a second run (another session): nothing trained, the same models found, all measured again
    assert frontier.main(toy(tmp_path, "out2", 2, "--no-train")) == 0
    res2 = json.loads((tmp_path / "out2" / "frontier-quick.json").read_text())
    assert res2["trained"] == 0
    assert {v: r["stub"] for v, r in res2["models"]["yolov8n"].items()} == {v: r["stub"] for v, r in rows.items()}
    # a changed input (more recovery epochs) is another model: not in the zoo, left out with --no-train and said so
    assert frontier.main(toy(tmp_path, "out3", 3, "--no-train")) == 0
    res3 = json.loads((tmp_path / "out3" / "frontier-quick.json").read_text())
    assert set(res3["models"]["yolov8n"]) == {"dense", "ov-int8-ptq"}  # dense-ft too has 3 epochs now
    assert res3["reference"] == {"yolov8n": None} and any("the variants and controls wait" in n for n in res3["notes"])


def test_convergence_rule():
    flat = [{"epoch": i, "map50": 0, "map50_95": min(0.30, 0.01 * i)} for i in range(1, 41)]
    climbing = [{"epoch": i, "map50": 0, "map50_95": 0.005 * i} for i in range(1, 41)]
    assert bench_zoo.convergence(flat) == {"converged": True, "gain_points": 0.0, "epochs": 40,
                                           "rule": bench_zoo.convergence(flat)["rule"]}
    got = bench_zoo.convergence(climbing)
    assert not got["converged"] and got["gain_points"] == 5.0  # 0.200 at epoch 40 vs 0.150 at epoch 30
    assert bench_zoo.convergence(flat[:3])["converged"] is False
