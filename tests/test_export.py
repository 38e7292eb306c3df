"""FP32 export: deployment folder contents, exact zero preservation, PyTorch/onnxruntime parity, CLI, bad input."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from sparse_core.cli import main
from sparse_core.export import export_model, read_deployment

os.environ.setdefault("YOLO_OFFLINE", "1")
RECIPE = "version: 1.1.0\nmodifiers:\n  - !GMPruningModifier\n    final_sparsity: 0.5\n"


def make_model(prune: bool, seed: int = 0):
    """yolov8n (nc=3) with non-trivial BatchNorm statistics, so Conv+BN fusion changes every weight's scale."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
            if prune and isinstance(m, torch.nn.Conv2d) and m.weight.numel() > 100:
                w = m.weight
                w[w.abs() <= w.abs().flatten().kthvalue(w.numel() // 2).values] = 0
    return model


def conv_zeros_torch(model) -> int:
    return sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def conv_zeros_onnx(path) -> int:
    """Zeros in the initializers that feed Conv weight inputs (counted here independently of sparse_core)."""
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return sum(int((inits[n.input[1]] == 0).sum()) for n in proto.graph.node if n.op_type == "Conv")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A pruned checkpoint saved the way Ultralytics saves (half precision) and its export at 64 px."""
    root = tmp_path_factory.mktemp("export")
    model = make_model(prune=True)
    ckpt = root / "pruned.pt"
    torch.save({"model": model.half(), "train_args": {"imgsz": 64},
                "sparsepipe": {"recipe_resolved": RECIPE, "imgsz": 64, "task": "detect"}}, ckpt)
    info = export_model(ckpt, root / "deploy")
    return root, ckpt, info


def test_deployment_folder_contents(pruned):
    root, _, info = pruned
    deploy = root / "deploy"
    assert sorted(p.name for p in deploy.iterdir()) == ["data.yaml", "export.json", "model.onnx", "recipe.yaml"]
    assert json.loads((deploy / "export.json").read_text()) == info
    assert info["inputs"] == [{"name": "images", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    # Ultralytics' standard detect output: (batch, 4 + nc, anchors); anchors = 8^2 + 4^2 + 2^2 at 64 px
    assert info["outputs"] == [{"name": "output0", "shape": [1, 7, 84], "dtype": "float32"}]
    model_bytes = (deploy / "model.onnx").read_bytes()
    assert info["size_bytes"] == len(model_bytes) and 0 < info["size_gzip_bytes"] < len(model_bytes)
    assert info["sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert info["quantized"] is False and info["opset"] == 17 and info["simplified"] is True
    # BN folded; 63 convs: the DFL is exported as float reductions (fast on every engine), not a 1x1 Conv
    assert info["node_types"]["Conv"] == 63 and "BatchNormalization" not in info["node_types"]
    assert "Softmax" not in info["node_types"] and info["node_types"]["ReduceMax"] == 1
    assert info["ort_optimized"]["integer_convs"] == 0
    assert (deploy / "recipe.yaml").read_text() == RECIPE
    data = read_deployment(deploy / "model.onnx")
    assert data["names"] == {0: "0", 1: "1", 2: "2"} and data["imgsz"] == 64 == info["imgsz"]
    assert data["task"] == "detect" and data["stride"] == 32
    meta = {p.key: p.value for p in onnx.load(str(deploy / "model.onnx")).metadata_props}
    assert meta["task"] == "detect" and meta["imgsz"] == "[64, 64]" and meta["stride"] == "32"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_zeros_survive_export_exactly(pruned):
    root, ckpt, info = pruned
    model = torch.load(ckpt, weights_only=False)["model"].float()
    expected = conv_zeros_torch(model) - 1  # the DFL's fixed arange conv (one 0) is float reductions in ONNX
    assert expected > 1_000_000  # about half of yolov8n's 3.0M conv weights
    assert conv_zeros_onnx(root / "deploy" / "model.onnx") == expected
    assert info["zeros"] == info["zeros_pytorch"] == expected
    assert info["sparsity"] == pytest.approx(expected / info["conv_params"], abs=1e-6)


def test_parity_pytorch_vs_onnxruntime(pruned):
    root, ckpt, info = pruned
    model = torch.load(ckpt, weights_only=False)["model"].float().eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)[0].numpy()  # eval mode, unfused: (decoded predictions, raw dict)
    sess = ort.InferenceSession(str(root / "deploy" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})[0]
    assert got.shape == expected.shape == (1, 7, 84)
    assert np.abs(got - expected).max() <= 1e-3
    assert info["parity_max_abs_diff"] <= 1e-3


def test_cli_dense_opset21_batch2_replaces_existing_folder(tmp_path, capsys):
    ckpt = tmp_path / "dense.pt"
    torch.save({"model": make_model(prune=False, seed=2).half(), "train_args": {"imgsz": 64}}, ckpt)
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "stale.txt").write_text("from an older export")
    rc = main(["export", "--weights", str(ckpt), "--out", str(out), "--imgsz", "96", "--batch", "2", "--opset", "21", "--json"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not (out / "stale.txt").exists()
    assert info["opset"] == 21 and info["batch"] == 2
    assert info["outputs"][0]["shape"] == [2, 7, 144 + 36 + 9]
    proto = onnx.load(str(out / "model.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [21]
    assert info["zeros"] == info["zeros_pytorch"]  # dense: only the DFL conv's arange(16) holds a zero
    assert (out / "recipe.yaml").read_text().startswith("# dense model")
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"images": np.zeros((2, 3, 96, 96), np.float32)})[0].shape == (2, 7, 189)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--opset", "12"], "--opset"),
        (["--opset", "22"], "--opset"),
        (["--imgsz", "50"], "--imgsz"),
        (["--batch", "0"], "--batch"),
    ],
)
def test_bad_arguments_exit_2_without_model(pruned, tmp_path, capsys, extra, message):
    _, ckpt, _ = pruned
    out = tmp_path / "deploy"
    assert main(["export", "--weights", str(ckpt), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_non_checkpoint_exit_2(tmp_path, capsys):
    bad = tmp_path / "notes.pt"
    bad.write_text("this is not a checkpoint")
    out = tmp_path / "deploy"
    assert main(["export", "--weights", str(bad), "--out", str(out)]) == 2
    assert "notes.pt" in capsys.readouterr().err
    torch.save({"weights": [1, 2, 3]}, tmp_path / "dict.pt")
    assert main(["export", "--weights", str(tmp_path / "dict.pt"), "--out", str(out)]) == 2
    assert not out.exists()


def test_failure_after_writing_keeps_previous_folder(pruned, tmp_path):
    """A fake-quant model onnxruntime cannot run with integer convs fails late; the old deployment stays intact."""
    from torch.ao.quantization import FakeQuantize

    model = make_model(prune=False)
    first = model.model[0]
    first.conv = torch.nn.Sequential(FakeQuantize(), first.conv)  # Q/DQ on one input only: no integer conv
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"previous export")
    with pytest.raises(RuntimeError, match="integer kernels"):
        export_model({"model": model}, out, imgsz=64)
    assert (out / "model.onnx").read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]
    with pytest.raises(Exception, match="no FakeQuantize"):
        export_model({"model": make_model(prune=False), "sparsepipe": {"quantized": True}}, out, imgsz=64)
