"""Seed 000's sparse-transfer recipe, verbatim (shortened with recipe_args), on a pruned YOLOv8n: QAT through the
real Ultralytics trainer, then QDQ ONNX export and onnxruntime evaluation.

A dense yolov8n is first overfit on a tiny synthetic set (val = train), so mAP is far from 0 and the fake-quant vs
QDQ comparison means something; 30% of every conv weight (smallest magnitudes) is then zeroed to make the pruned base checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import numpy_helper
from torch.ao.quantization import FakeQuantizeBase

from sparse_core.checkpoint import checkpoint_model, load_checkpoint, sparsepipe_meta
from sparse_core.data.synth import synth_dataset
from sparse_core.export import export_model
from sparse_core.integrations.ultralytics import train, val
from sparse_core.quantization.modules import ConvBn2d

os.environ.setdefault("YOLO_OFFLINE", "1")
IMGSZ = 64
SEED000 = Path(__file__).parent / "recipes" / "seed000_yolov8m_pruned80_quant_transfer.yaml"
SHORT = {"num_epochs": 3, "qat_start_epoch": 1, "observer_freeze_epoch": 2, "bn_freeze_epoch": 2}


def conv_zeros(model: torch.nn.Module) -> dict[str, int]:
    return {n: int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("conv.weight") and "dfl" not in n}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("qat")
    synth = synth_dataset(root / "synth", n_train=32, n_val=4, imgsz=IMGSZ, seed=1, n_classes=2)
    cfg = yaml.safe_load(synth.read_text())
    cfg["val"] = cfg["train"]  # overfit on purpose: a learnt model in seconds
    out = root / "overfit.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


@pytest.fixture(scope="module")
def pruned(data, tmp_path_factory) -> tuple[Path, dict[str, int], int]:
    root = tmp_path_factory.mktemp("base")
    dense = train(model="yolov8n.yaml", data=str(data), epochs=30, imgsz=IMGSZ, batch=8, workers=0, project=root,
                  name="dense", plots=False, extra_args={"mosaic": 0.0, "val": False})
    ckpt = load_checkpoint(dense["weights"]["last"])
    model = checkpoint_model(ckpt)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("conv.weight") and "dfl" not in name and p.numel() > 100:
                p[p.abs() <= p.abs().flatten().kthvalue(p.numel() * 3 // 10).values] = 0  # 30%: QAT at 1e-6 LR cannot recover more
    ckpt["ema"], ckpt["model"] = model.half(), None
    path = root / "pruned.pt"
    torch.save(ckpt, path)
    from sparse_core.export.export import conv_zero_count

    return path, conv_zeros(model), conv_zero_count(model)[0]  # as export counts (the DFL is not a Conv there)


@pytest.fixture(scope="module")
def qat(pruned, data, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("qatrun")
    summary = train(model=str(pruned[0]), data=str(data), recipe=str(SEED000), recipe_args=SHORT, imgsz=IMGSZ,
                    batch=8, workers=0, project=root, name="qat", plots=False)
    deploy = root / "deploy"
    info = export_model(summary["weights"]["last"], deploy)
    return {"summary": summary, "deploy": deploy, "info": info}


def test_qat_checkpoint_state(qat):
    ckpt = load_checkpoint(qat["summary"]["weights"]["last"])
    meta = sparsepipe_meta(ckpt)
    assert meta["quantized"] is True
    handler = meta["manager"]["handlers"][0]
    assert handler == {"started": True, "observers_disabled": True, "bn_frozen": True}
    model = checkpoint_model(ckpt)
    fqs = [m for m in model.modules() if isinstance(m, FakeQuantizeBase)]
    assert len(fqs) > 100 and all(int(m.observer_enabled[0]) == 0 for m in fqs)  # the EMA never observes
    assert all(int(m.fake_quant_enabled[0]) == 1 for m in fqs)
    assert sum(isinstance(m, ConvBn2d) for m in model.modules()) == 57


def test_pruned_zeros_survive_qat_exactly(pruned, qat):
    _, before, total = pruned
    for kind in ("last", "best"):
        after = conv_zeros(checkpoint_model(load_checkpoint(qat["summary"]["weights"][kind])))
        assert after == before, kind
    info = qat["info"]
    assert info["zeros_pytorch"] == total
    assert info["zeros"] >= info["zeros_pytorch"]  # INT8 rounding may add zeros, never lose one


def _module_name(node_name: str) -> str:
    """'/model.22/cv3.0/cv3.0.2/Conv' -> 'model.22.cv3.0.2' (TorchScript scopes, nested ones repeat the prefix)."""
    parts = node_name.strip("/").split("/")[:-1]
    out: list[str] = []
    for p in parts:
        if out and p.startswith(out[-1] + "."):
            out[-1] = p
        else:
            out.append(p)
    return ".".join(out)


def test_qdq_graph_follows_the_recipe(qat):
    proto = onnx.load(str(qat["deploy"] / "model.onnx"))
    producers = {o: n for n in proto.graph.node for o in n.output}
    inits = {t.name: t for t in proto.graph.initializer}
    model = checkpoint_model(load_checkpoint(qat["summary"]["weights"]["last"]))
    modules = dict(model.named_modules())
    convs = {_module_name(n.name): n for n in proto.graph.node if n.op_type == "Conv"}
    assert len(convs) == 63  # the DFL is exported as float reductions, not a Conv

    def src(name):
        return producers.get(name)

    checked = 0
    for name, node in convs.items():
        module = modules[name]
        weight_dq = src(node.input[1])
        if isinstance(getattr(module, "weight_fake_quant", None), FakeQuantizeBase):
            assert weight_dq is not None and weight_dq.op_type == "DequantizeLinear", name
            w = inits[weight_dq.input[0]]
            assert w.data_type == onnx.TensorProto.INT8, name  # INT8 stored
            assert numpy_helper.to_array(inits[weight_dq.input[1]]).size == module.out_channels, name  # per-channel
            checked += 1
        else:
            assert weight_dq is None, name  # float weight initializer
        x = src(node.input[0])
        if isinstance(getattr(module, "input_quant", None), FakeQuantizeBase):
            assert x.op_type == "DequantizeLinear" and src(x.input[0]).op_type == "QuantizeLinear", name
            scale = numpy_helper.to_array(inits[x.input[1]])
            assert scale.size == 1, name  # activations per-tensor
            assert numpy_helper.to_array(inits[x.input[2]]).dtype == np.uint8, name  # asymmetric uint8
        elif x is not None and x.op_type == "DequantizeLinear":
            # input_activations: null — the producer's own output quantization is the only Q/DQ pair here
            q = src(x.input[0])
            assert src(q.input[0]) is None or src(q.input[0]).op_type != "DequantizeLinear", name
    assert checked == 63  # every conv (the DFL is not one)
    dfl = [n for n in proto.graph.node if "/dfl/" in n.name]
    assert dfl and not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in dfl)  # ignore: float
    for name in ("model.2.m.0.cv1.conv", "model.4.m.0.cv1.conv", "model.5.conv", "model.22.cv2.0.0.conv"):
        assert getattr(modules[name], "input_quant", None) is None, name  # input_activations: null
    assert getattr(modules["model.2.m.0.add_input_0"], "input_quant", None) is None
    # output override of model.2.cv1.act: its SiLU (Sigmoid * x) output is quantized asymmetric uint8
    mul = next(n for n in proto.graph.node if n.op_type == "Mul" and _module_name(n.name) == "model.2.cv1.act")
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == mul.output[0])
    assert numpy_helper.to_array(inits[q.input[2]]).dtype == np.uint8
    info = qat["info"]
    assert info["quantized"] and info["ort_optimized"]["integer_ops"]["QLinearConv"] >= 40


def test_qdq_onnx_map_matches_fake_quant_pytorch(qat, data):
    pt = val(qat["summary"]["weights"]["last"], data=str(data), imgsz=IMGSZ)
    ox = val(str(qat["deploy"]), data=str(data), imgsz=IMGSZ)
    print(f"\nmAP50 fake-quant PyTorch {pt['map50']:.4f}, QDQ onnxruntime {ox['map50']:.4f}")  # shown with -s
    assert pt["map50"] > 0.1, pt  # a learnt model, so the comparison means something
    assert abs(pt["map50"] - ox["map50"]) <= 0.01, (pt["map50"], ox["map50"])


def test_new_training_from_a_quantized_checkpoint_is_refused(qat, data, tmp_path):
    from sparse_core.errors import UserError

    with pytest.raises(UserError, match="quantized \\(QAT\\) checkpoint.*--resume"):
        train(model=qat["summary"]["weights"]["last"], data=str(data), epochs=1, imgsz=IMGSZ, project=tmp_path,
              plots=False)


class Interrupt(Exception):
    """Raised from a callback to stop training right after a checkpoint was written."""


def test_resume_in_the_middle_of_qat_is_exact(pruned, data, qat, tmp_path):
    def stop_after_second_epoch(trainer):
        if trainer.epoch == 1:  # QAT started at epoch 1; last.pt now holds the QAT model mid-recipe
            raise Interrupt

    with pytest.raises(Interrupt):
        train(model=str(pruned[0]), data=str(data), recipe=str(SEED000), recipe_args=SHORT, imgsz=IMGSZ, batch=8,
              workers=0, project=tmp_path, name="qat", plots=False, callbacks=[("on_model_save", stop_after_second_epoch)])
    last = tmp_path / "qat" / "weights" / "last.pt"
    meta = sparsepipe_meta(load_checkpoint(last))
    assert meta["quantized"] and "train_state" in meta and meta["manager"]["handlers"][0]["started"]
    resumed = train(resume=str(last), workers=0)
    a = checkpoint_model(load_checkpoint(resumed["weights"]["last"])).state_dict()
    b = checkpoint_model(load_checkpoint(qat["summary"]["weights"]["last"])).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
