"""Benchmark: result structure and internal consistency (never speed thresholds), --compare ratios, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from sparse_core.bench import benchmark
from sparse_core.bench.cpu import cpu_info
from sparse_core.cli import main
from sparse_core.export import export_model

os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(scope="module")
def deployments(tmp_path_factory):
    """Dense and 50%-pruned yolov8n (nc=2) exported at 64 px; a dense one at 96 px for shape mismatches."""
    from ultralytics.nn.tasks import DetectionModel

    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    dense = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    pruned = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    pruned.load_state_dict(dense.state_dict())
    with torch.no_grad():
        for m in pruned.modules():
            if isinstance(m, torch.nn.Conv2d) and m.weight.numel() > 100:
                w = m.weight
                w[w.abs() <= w.abs().flatten().kthvalue(w.numel() // 2).values] = 0
    out = {}
    for name, model, imgsz in (("dense", dense, 64), ("pruned", pruned, 64), ("dense96", dense, 96)):
        out[name] = root / name
        export_model({"model": model}, out[name], imgsz=imgsz)
    return out


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_single_model_structure_and_consistency(deployments):
    folder = deployments["pruned"]
    exported = json.loads((folder / "export.json").read_text())
    r = benchmark(folder / "model.onnx", iterations=7, warmup=2, threads=1)
    assert r["engine"] == "onnxruntime" and r["engine_version"] == ort.__version__
    assert r["iterations"] == 7 and r["threads"] == 1 and r["batch"] == 1 and r["imgsz"] == 64
    lat = r["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert r["images_per_s"] == pytest.approx(1000 / lat["mean"], rel=1e-3)
    assert r["size_bytes"] == exported["size_bytes"] and r["size_gzip_bytes"] == exported["size_gzip_bytes"]
    assert r["size_mb"] == pytest.approx(exported["size_bytes"] / 1e6, abs=1e-4)
    assert r["sparsity"] == exported["sparsity"] and 0.49 < r["sparsity"] < 0.51
    assert r["quantized"] is False and "compare" not in r
    # each reported flag agrees with this machine's /proc/cpuinfo, read here independently of sparse_core
    words = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            words |= set(line.split(":", 1)[1].split())
    expected = {"avx2": "avx2" in words, "avx512f": "avx512f" in words, "avx512_vnni": "avx512_vnni" in words,
                "avx_vnni": "avx_vnni" in words, "avx512_bf16": "avx512_bf16" in words, "amx": "amx_int8" in words}
    assert r["cpu"]["flags"] == expected
    assert r["cpu"] == cpu_info()


def test_cli_compare_interleaved_json(deployments, capsys):
    rc = main(["benchmark", str(deployments["pruned"]), "--compare", str(deployments["dense"] / "model.onnx"),
               "--iterations", "6", "--warmup", "1", "--json"])
    assert rc == 0
    r = last_json(capsys)
    other = r["compare"]
    assert r["interleaved"]["order"] == "ABBA blocks" and r["iterations"] == other["iterations"] == 6
    assert r["speedup"] == pytest.approx(r["images_per_s"] / other["images_per_s"], rel=1e-3)
    assert r["size_ratio_gzip"] == pytest.approx(other["size_gzip_bytes"] / r["size_gzip_bytes"], rel=1e-3)
    # same architecture: raw sizes within a few bytes, but half the weights are zero so gzip shrinks the pruned one
    assert r["size_ratio_gzip"] > 1.2
    assert other["sparsity"] < 0.01 < 0.49 < r["sparsity"]
    for key in ("images_per_s", "latency_ms", "size_mb", "size_gzip_mb", "sparsity", "engine"):
        assert key in r


def test_seconds_budget(deployments):
    r = benchmark(deployments["dense"], seconds=0.3, warmup=0)
    assert r["iterations"] >= 1 and r["wall_s"] >= 0.3


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_benchmark_many_times_every_model_interleaved(deployments, engine):
    from sparse_core.bench import benchmark_many
    from sparse_core.errors import UserError

    res = benchmark_many({"dense": deployments["dense"], "pruned": deployments["pruned"] / "model.onnx"},
                         engine=engine, threads=1, warmup=1, seconds=0.3)
    assert set(res) == {"dense", "pruned"}
    for r in res.values():  # each model got its own share of the timed blocks, consistent summaries
        assert r["iterations"] >= 2 and r["engine"] == engine and r["precision"] and r["input_shape"] == [1, 3, 64, 64]
        assert r["images_per_s"] == pytest.approx(1e3 / r["latency_ms"]["mean"], rel=1e-3)
    assert res["pruned"]["sparsity"] > 0.49 > 0.01 > res["dense"]["sparsity"]
    with pytest.raises(UserError, match="input shapes differ"):
        benchmark_many({"a": deployments["dense"], "b": deployments["dense96"]}, seconds=0.1)


def test_cpu_flags_parsed_from_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
                 "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx avx2 fma\n")
    info = cpu_info(f)
    assert info["model"] == "Test CPU 9000" and info["isa"] == "AVX2"
    assert info["flags"] == {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False,
                             "avx512_bf16": False, "amx": False}
    f.write_text("model name\t: V\nflags\t\t: avx2 avx512f avx512_vnni\n")
    assert cpu_info(f)["isa"] == "AVX-512 VNNI"


def _bad_inputs(tmp_path, deployments):
    text = tmp_path / "notes.onnx"
    text.write_text("definitely not a protobuf")
    data = (deployments["dense"] / "model.onnx").read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    dense = str(deployments["dense"])
    return {
        "non-onnx": ([str(text)], "notes.onnx"),
        "truncated": ([str(truncated)], "truncated.onnx"),
        "imgsz": ([dense, "--imgsz", "96"], "--imgsz"),
        "zero-iterations": ([dense, "--iterations", "0"], "--iterations"),
        "batch": ([dense, "--batch", "4"], "--batch"),
        "missing": ([str(tmp_path / "nope")], "not found"),
        "compare-shape": ([dense, "--compare", str(deployments["dense96"])], "--compare"),
        "engine": ([dense, "--engine", "tensorrt"], "--engine"),
    }


@pytest.mark.parametrize("case", ["non-onnx", "truncated", "imgsz", "zero-iterations", "batch", "missing",
                                  "compare-shape", "engine"])
def test_bad_input_exit_2_one_line(deployments, tmp_path, capsys, case):
    argv, needle = _bad_inputs(tmp_path, deployments)[case]
    extra = [] if "--iterations" in argv else ["--iterations", "1"]
    assert main(["benchmark", *argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
