"""Benchmark engines and the "why" report: OpenVINO (precision as resolved, performance counters), onnxruntime's
profiler, integer-kernel share of conv MACs, the verdict line, DeepSparse through its side venv. No speed
thresholds: structure and consistency only (the machine is shared)."""

from __future__ import annotations

import json
import os

import onnx
import pytest
import torch

from sparse_core.bench import benchmark, benchmark_many, why
from sparse_core.bench import deepsparse_venv
from sparse_core.cli import main
from sparse_core.export import export_model

os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A dense yolov8n (nc=3) and the QDQ export of a fake-quant one (tests/test_export_qdq.py), both 64 px."""
    from test_export_qdq import fake_quant_yolo
    from ultralytics.nn.tasks import DetectionModel

    root = tmp_path_factory.mktemp("engines")
    torch.manual_seed(0)
    export_model({"model": DetectionModel("yolov8n.yaml", nc=3, verbose=False)}, root / "dense", imgsz=64)
    model, n_quantized, _ = fake_quant_yolo()
    export_model({"model": model, "train_args": {"imgsz": 64}, "sparsepipe": {"quantized": True}}, root / "qdq")
    return root, n_quantized


def test_conv_macs_of_a_known_graph(models):
    root, _ = models
    macs = why.conv_macs(onnx.load(str(root / "dense" / "model.onnx")))
    first = macs["/model.0/conv/Conv"]
    assert first["macs"] == 16 * 3 * 3 * 3 * 32 * 32  # 16 filters of 3x3x3 over a 32x32 output (stride 2 of 64)
    assert len(macs) == 63  # the DFL is not a Conv in our export


def test_openvino_precision_profile_and_verdict(models):
    root, n_quantized = models
    r = benchmark(root / "qdq", engine="openvino", iterations=3, warmup=1, threads=1, compare=root / "dense")
    assert r["engine"] == "openvino" and r["engine_version"] and r["precision"] in ("f32", "bf16", "f16")
    assert r["compare"]["precision"] == r["precision"]
    prof = r["profile"]
    assert prof["source"] == "OpenVINO performance counters" and prof["ops"]
    assert sum(o["share"] for o in prof["ops"]) == pytest.approx(1.0, abs=0.01)
    kernels = r["integer_kernels"]
    assert kernels["integer_convs"] >= n_quantized // 2 and kernels["matched_mac_share"] > 0.9
    assert 0 < r["integer_conv_mac_share"] <= 1 and r["compare"]["integer_conv_mac_share"] == 0
    assert r["verdict"].startswith("INT8") and "baseline" in r["verdict"]
    f32 = benchmark(root / "dense", engine="openvino", precision="f32", iterations=2, warmup=0, threads=1)
    assert f32["precision"] == "f32"


def test_onnxruntime_profile_and_integer_share(models):
    root, n_quantized = models
    r = benchmark(root / "qdq", iterations=2, warmup=1, threads=1)
    ops = {o["op"] for o in r["profile"]["ops"]}
    assert "QLinearConv" in ops and r["integer_kernels"]["integer_convs"] == n_quantized
    assert 0.5 < r["integer_conv_mac_share"] < 1  # the head's output convs stay float
    assert r["precision"].startswith("f32")


def test_cli_prints_isa_precision_and_verdict(models, capsys):
    root, _ = models
    assert main(["benchmark", str(root / "dense"), "--engine", "openvino", "--precision", "f32",
                 "--iterations", "2", "--warmup", "0", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    r = json.loads(lines[-1])
    assert r["cpu"]["isa"] in lines[0] and "(f32)" in lines[0]
    assert any(line.startswith("verdict: ") for line in lines)
    assert r["verdict"]


def test_openvino_isa_cap_runs_in_a_worker(models):
    """--isa caps oneDNN in worker processes (it reads the cap once per process): the kernels OpenVINO reports for
    both models are then AVX2 ones, while this process stays uncapped (its own runs are untouched)."""
    root, _ = models
    r = benchmark(root / "qdq", engine="openvino", isa="avx2", iterations=3, warmup=1, threads=1, compare=root / "dense")
    assert r["isa_cap"] == "AVX2" and r["iterations"] == 3 and r["compare"]["iterations"] == 3
    kernels = r["integer_kernels"]["kernels"]
    assert any(k.upper().endswith("_I8") or k.upper().endswith("_U8") for k in kernels)
    assert not any("avx512" in k or "amx" in k for k in kernels + r["compare"]["integer_kernels"]["kernels"])
    assert "try --isa" not in r["verdict"]
    many = benchmark_many({"qdq": root / "qdq", "dense": root / "dense"}, engine="openvino", isa="avx2", threads=1,
                          warmup=1, seconds=0.3)  # the frontier's "openvino-vnni" column goes this way
    assert {k: v["precision"] for k, v in many.items()} == {"qdq": "f32", "dense": "f32"}


@pytest.mark.parametrize("argv, needle", [(["--engine", "onnxruntime", "--precision", "bf16"], "--precision"),
                                          (["--engine", "openvino", "--precision", "int4"], "--precision"),
                                          (["--engine", "onnxruntime", "--isa", "avx2"], "--isa"),
                                          (["--engine", "openvino", "--isa", "avx9000"], "--isa")])
def test_precision_bad_input(models, capsys, argv, needle):
    root, _ = models
    assert main(["benchmark", str(root / "dense"), *argv, "--iterations", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_verdict_lines():
    q = {"engine": "onnxruntime", "quantized": True, "sparsity": 0.0, "speedup": 0.8,
         "profile": {"ops": [{"op": "QuantizeLinear", "share": 0.2}], "qdq_share": 0.31}, "integer_conv_mac_share": 0.97}
    assert why.verdict(q) == "INT8 not paying: 31% of time in Q/DQ ops; 0.80x the baseline"
    assert "only 10% of conv MACs" in why.verdict({**q, "integer_conv_mac_share": 0.1})
    amx = {**q, "engine": "openvino", "profile": {"ops": [{"op": "Convolution", "share": 0.7}], "qdq_share": 0.0},
           "integer_kernels": {"kernels": ["brgconv_avx512_amx_I8", "brgconv_avx512_amx_1x1_I8"]}}
    assert why.verdict(amx).endswith("try --isa AVX512_CORE_VNNI")
    assert "try --isa" not in why.verdict({**amx, "isa_cap": "AVX512_CORE_VNNI"})
    sparse = {"engine": "openvino", "quantized": False, "sparsity": 0.8, "precision": "bf16"}
    assert why.verdict(sparse).startswith("sparse but not faster on openvino")


def test_deepsparse_native_share_parsing():
    log = "[nm_ort 7f >DIAGNOSE< operator() nm_execution_provider.cc:331] == NM Execution Provider supports 0% of the network"
    assert deepsparse_venv.native_share(log) == 0.0
    assert deepsparse_venv.native_share("supports 92.5% of the network") == 0.925
    assert deepsparse_venv.native_share("no such line") is None


def test_deepsparse_through_side_venv(models, capsys, monkeypatch):
    """Real DeepSparse 1.8 in .venv-deepsparse (`make deepsparse-venv`); without it, one clear line saying how."""
    root, _ = models
    rc = main(["benchmark", str(root / "dense"), "--engine", "deepsparse", "--iterations", "2", "--threads", "1",
               "--json"])
    if not (deepsparse_venv.ROOT / ".venv-deepsparse" / "bin" / "python").is_file() \
            and not os.environ.get(deepsparse_venv.ENV):
        assert rc == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "make deepsparse-venv" in err
        return
    assert rc == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["engine"] == "deepsparse" and r["engine_version"] == "1.8.0" and r["iterations"] == 2
    assert r["native_share"] is not None and 0 <= r["native_share"] <= 1
    monkeypatch.setenv(deepsparse_venv.ENV, str(root / "no-python"))
    assert main(["benchmark", str(root / "dense"), "--engine", "deepsparse", "--iterations", "1"]) == 2


def test_benchmark_step_engine_precision_in_mlflow(models, tmp_path):
    """The KFP benchmark step's body: engine and precision pass through; MLflow gets engine, version, precision."""
    import mlflow

    from sparse_core import steps

    root, _ = models
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = steps.benchmark(model=str(root / "dense"), out=str(tmp_path / "bench.json"), engine="openvino",
                          precision="f32", iterations=2, warmup=0,
                          ctx=steps.StepContext(mlflow_uri=uri, cache_dir="none"))
    assert res["engine"] == "openvino" and res["precision"] == "f32"
    assert json.loads((tmp_path / "bench.json").read_text())["precision"] == "f32"
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    params = runs[0].data.params
    assert params["bench.engine"] == "openvino" and params["bench.precision"] == "f32"
    assert params["bench.engine_version"] == res["engine_version"] and params["precision"] == "f32"
    assert runs[0].data.metrics["images_per_s"] > 0 and "integer_conv_mac_share" in runs[0].data.metrics
    capped = steps.benchmark(model=str(root / "qdq"), out=str(tmp_path / "capped.json"), engine="openvino",
                             isa="avx2", iterations=2, warmup=0, ctx=steps.StepContext(mlflow_uri=uri, cache_dir="none"))
    assert capped["isa_cap"] == "AVX2" and capped["precision"] == "f32"  # no BF16 under an AVX2 cap
    run = client.search_runs([e.experiment_id for e in client.search_experiments()], "params.isa = 'avx2'")[0]
    assert run.data.params["bench.isa_cap"] == "AVX2"


def test_interleaved_protocol_counts_untimed_runs():
    """make bench's timing: warm-up and the first run of every block are untimed; both models are timed."""
    from sparse_core.bench.runner import interleaved

    calls = {"a": 0, "b": 0}

    def runner(name):
        def run():
            calls[name] += 1
        return run

    lat = interleaved({"a": runner("a"), "b": runner("b")}, warmup=2, seconds=0.05)
    for name in ("a", "b"):
        assert lat[name] and all(t >= 0 for t in lat[name])
        assert calls[name] > len(lat[name]) + 2  # 2 warm-up runs, 1 block-sizing probe, 1 untimed run per block


def test_nncf_ptq_keeps_the_head_float(models, tmp_path):
    """NNCF INT8 for OpenVINO (the users' `format=openvino int8=True` path): the ignored scope comes from the ONNX
    graph (DFL and decode), the IR runs, its convs run int8 and nothing of the decode is quantized."""
    import numpy as np
    import openvino as ov

    from sparse_core.export import openvino_int8

    root, _ = models
    onnx_path = root / "dense" / "model.onnx"
    scope = openvino_int8.head_scope(onnx.load(str(onnx_path)))
    assert any("/dfl/" in n for n in scope) and all(n.startswith("/model.22/") for n in scope)
    images = [np.random.default_rng(i).random((1, 3, 64, 64), dtype=np.float32) for i in range(2)]
    facts = openvino_int8.ptq(onnx_path, tmp_path / "int8" / "model.xml", images)
    assert facts["ignored_nodes"] == len(scope)
    model = ov.Core().read_model(str(tmp_path / "int8" / "model.xml"))
    fq = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert fq and not any("dfl" in op.get_friendly_name() for op in fq)
    from sparse_core.bench import engines

    loaded = engines.openvino(tmp_path / "int8" / "model.xml", images[0], threads=1)
    kernels = loaded.profile(2)["conv_kernels"]
    share = why.ov_integer_share(kernels, why.conv_macs(onnx.load(str(onnx_path))))
    assert share["matched_mac_share"] > 0.9 and share["integer_conv_mac_share"] > 0.5


@pytest.mark.parametrize("yaml_name", ["yolov8n-seg.yaml", "yolov5nu.yaml", "yolov3-tinyu.yaml"])
def test_every_family_exports_and_runs_on_openvino(yaml_name, tmp_path):
    """Detect and Segment exports of the v3u/v5u/v8 families compile and run in OpenVINO and give onnxruntime's
    outputs (f32), with the DFL exported as float reductions."""
    import numpy as np
    import onnxruntime as ort
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    from sparse_core.bench import engines

    torch.manual_seed(0)
    cls = SegmentationModel if "-seg" in yaml_name else DetectionModel
    info = export_model({"model": cls(yaml_name, nc=2, verbose=False)}, tmp_path / "d", imgsz=64)
    assert "Softmax" not in info["node_types"]
    path = tmp_path / "d" / "model.onnx"
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    got = engines.openvino(path, x, threads=1, precision="f32")
    assert got.precision == "f32"
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ov_out = compiled(x)
    ort_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    for i, ref in enumerate(ort_out):
        assert np.allclose(ov_out[i], ref, atol=1e-3, rtol=1e-3), i


@pytest.mark.parametrize("yaml_name", ["yolov8n.yaml", "yolov8n-seg.yaml", "yolov5nu.yaml", "yolov3-tinyu.yaml"])
def test_every_family_quantized_export_compiles_on_openvino(yaml_name, tmp_path):
    """The INT8 QDQ export (shipped QAT scheme, observers calibrated on a few batches) of each family compiles in
    OpenVINO at its default precision and agrees with onnxruntime on the same file."""
    import numpy as np
    import onnxruntime as ort
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    from sparse_core.bench import engines
    from sparse_core.quantization import prepare
    from sparse_core.recipe import load_recipe
    from sparse_core.recipes import path as recipe_path

    torch.manual_seed(0)
    model = (SegmentationModel if "-seg" in yaml_name else DetectionModel)(yaml_name, nc=2, verbose=False)
    prepare(model, load_recipe(str(recipe_path("structured_kd_qat.yaml")), {"num_epochs": 3})
            .of_type("QuantizationModifier")[0], "test")
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 3, 64, 64))
    info = export_model({"model": model}, tmp_path / "q", imgsz=64)
    assert info["quantized"] and "QuantizeLinear" in info["node_types"]
    path = tmp_path / "q" / "model.onnx"
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    loaded = engines.openvino(path, x, threads=1)
    loaded.run()
    import openvino as ov

    ov_out = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1})(x)
    ort_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    for i, ref in enumerate(ort_out):
        got = np.asarray(ov_out[i])
        assert got.shape == ref.shape and np.isfinite(got).all(), i
    # detections agree (same graph, same integer grid). Not asserted on the -seg mask protos: with random weights
    # the proto branch's activations span ~2 quantization levels, so a rounding flip between the engines' integer
    # convs is a full-range difference there (seen: max |diff| = max |value| = 0.02) while boxes/scores match
    assert np.corrcoef(np.asarray(ov_out[0]).ravel(), ort_out[0].ravel())[0, 1] > 0.999
