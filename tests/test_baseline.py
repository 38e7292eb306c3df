"""The built-in OpenVINO INT8 baseline (Ultralytics' `export format=openvino int8=True` recipe): a deployment folder
with an NNCF-quantized QDQ model.onnx whose head decode stays float, that onnxruntime and OpenVINO both run."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sparse_core.cli import main

os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A dense yolov8n (nc=3) checkpoint with BatchNorm statistics measured on images, and a tiny data set."""
    from ultralytics.nn.tasks import DetectionModel

    from sparse_core.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("baseline")
    data = synth_dataset(root / "data", n_train=12, n_val=4, imgsz=64, seed=1)
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(4, 3, 64, 64))
    model.names = {0: "a", 1: "b", 2: "c"}
    ckpt = root / "dense.pt"
    torch.save({"model": model.half(), "train_args": {"imgsz": 64}}, ckpt)
    return root, ckpt, data


def test_baseline_folder_is_int8_with_a_float_head(dense, capsys):
    root, ckpt, data = dense
    out = root / "ov-int8"
    assert main(["baseline", "openvino-int8", str(ckpt), "--data", str(data), "--out", str(out),
                 "--calib", "8", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info == json.loads((out / "export.json").read_text())
    assert info["baseline"] == "openvino-int8" and info["quantized"] and info["calibration_images"] == 8
    assert {p.name for p in out.iterdir()} == {"model.onnx", "data.yaml", "recipe.yaml", "export.json"}
    proto = onnx.load(str(out / "model.onnx"))
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    int8 = [c for c in convs if producers.get(c.input[1]) is not None
            and producers[c.input[1]].op_type == "DequantizeLinear"]
    assert len(int8) == len(convs)  # backbone, neck and head convs all quantized (the DFL is float reductions) ...
    from sparse_core.export.openvino_int8 import head_scope

    names = set(head_scope(proto))
    decode = [n for n in proto.graph.node if n.name in names]
    assert decode and info["ignored_scope"] == len(decode) and any("/dfl/" in n.name for n in decode)
    for node in decode:  # ... but no decode/DFL op reads a dequantized tensor: box math stays float
        assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input), \
            node.name
    # both engines run it (a random network is chaotic under INT8 rounding, so outputs are compared on trained
    # models in benchmarks/, not here)
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    y_ort = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    import openvino as ov

    compiled = ov.Core().compile_model(str(out / "model.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    y_ov = compiled({0: x})[compiled.output(0)]
    assert y_ort.shape == y_ov.shape == (1, 7, 84) and np.isfinite(y_ort).all() and np.isfinite(y_ov).all()


def test_baseline_bad_input(dense, tmp_path, capfd):
    root, ckpt, data = dense
    assert main(["baseline", "openvino-int8", str(root / "missing.pt"), "--data", str(data),
                 "--out", str(tmp_path / "o")]) == 2
    assert main(["baseline", "openvino-int8", str(ckpt), "--data", str(data), "--out", str(tmp_path / "o"),
                 "--calib", "0"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--calib 0" in err[1]
    assert not (tmp_path / "o").exists()
