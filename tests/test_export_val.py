"""ONNX validation: onnxruntime through Ultralytics' metric code gives the PyTorch checkpoint's metrics."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from sparse_core.cli import main
from sparse_core.errors import UserError
from sparse_core.export import export_model
from sparse_core.integrations.ultralytics.run import val
from sparse_core.onnx_val import val_onnx

os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Synthetic 64 px data set and an untrained yolov8n whose head predicts ~24 px boxes with class score ~0.5.

    Untrained weights score mAP 0; this head makes many boxes overlap the objects, so the metrics are non-zero
    and comparing them is a real check that identical predictions reach the metric code.
    """
    from ultralytics.nn.tasks import DetectionModel

    from sparse_core.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("val")
    data = synth_dataset(root / "data", n_train=1, n_val=8, imgsz=64, seed=3, n_classes=3)
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    model.names = {0: "red square", 1: "green circle", 2: "blue triangle"}
    detect = model.model[-1]
    with torch.no_grad():
        for box, cls in zip(detect.cv2, detect.cv3):
            box[-1].weight.mul_(0.01)
            box[-1].bias.fill_(-10.0)
            box[-1].bias.view(4, 16)[:, 1:3] = 10.0  # DFL mass on bins 1-2: each side ~1.5 strides
            cls[-1].weight.mul_(0.1)
            cls[-1].bias.zero_()
    ckpt = root / "model.pt"
    torch.save({"model": model.half(), "train_args": {"imgsz": 64, "data": str(data)}}, ckpt)
    export_model(ckpt, root / "deploy")
    return root, data, ckpt


def test_onnx_metrics_equal_pytorch_metrics(setup):
    root, data, ckpt = setup
    pt = val(str(ckpt), data=str(data), imgsz=64, batch=1)
    ox = val_onnx(root / "deploy" / "model.onnx", data)
    assert pt["map50"] > 0 and pt["recall"] > 0  # non-trivial predictions
    for key in ("map50", "map50_95", "precision", "recall"):
        assert ox[key] == pytest.approx(pt[key], abs=1e-4), key
    assert ox["engine"] == "onnxruntime" and ox["quantized"] is False and ox["imgsz"] == 64 and ox["batch"] == 1


def test_val_cli_on_deployment_model(setup, capsys):
    root, data, _ = setup
    assert main(["val", "--weights", str(root / "deploy" / "model.onnx"), "--data", str(data), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["map50"] == pytest.approx(val_onnx(root / "deploy", data)["map50"], abs=1e-9)


def test_val_onnx_bad_input(setup, tmp_path):
    root, data, _ = setup
    with pytest.raises(UserError, match="--imgsz"):
        val_onnx(root / "deploy", data, imgsz=96)
    truncated = tmp_path / "model.onnx"
    truncated.write_bytes((root / "deploy" / "model.onnx").read_bytes()[:5000])
    with pytest.raises(UserError, match="not a valid ONNX model"):
        val_onnx(truncated, data)
    other = tmp_path / "five.yaml"
    other.write_text(yaml.safe_dump({**yaml.safe_load(data.read_text()), "names": dict(enumerate("abcde"))}))
    with pytest.raises(UserError, match="5 classes"):
        val_onnx(root / "deploy", other)


def test_openvino_val_matches_onnxruntime(setup, capsys):
    """The same deployment run by OpenVINO (IR through Ultralytics' OpenVINO backend): f32 gives onnxruntime's mAP;
    its default precision (bf16 on AVX512_BF16/AMX CPUs) is reported and stays close."""
    root, data, _ = setup
    ox = val_onnx(root / "deploy", data)
    ov32 = val_onnx(root / "deploy", data, engine="openvino", precision="f32")
    assert ov32["engine"] == "openvino" and ov32["inference_precision"] == "f32" and ov32["map50"] > 0
    for key in ("map50", "map50_95"):
        assert ov32[key] == pytest.approx(ox[key], abs=0.01), key
    assert main(["val", "--weights", str(root / "deploy"), "--data", str(data), "--engine", "openvino", "--json"]) == 0
    default = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert default["engine"] == "openvino" and default["inference_precision"] in ("f32", "bf16", "f16")
    assert default["map50_95"] == pytest.approx(ox["map50_95"], abs=0.05)


def test_val_engine_bad_input(setup, capsys):
    root, data, ckpt = setup
    with pytest.raises(UserError, match="--precision"):
        val_onnx(root / "deploy", data, precision="f32")  # onnxruntime has no precision switch
    assert main(["val", "--weights", str(ckpt), "--data", str(data), "--engine", "openvino"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint" in err
