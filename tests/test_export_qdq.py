"""QDQ export of a fake-quant model: Q/DQ in the graph, INT8 weights stored, onnxruntime runs integer convs.

The model is hand-made here (yolov8n whose Conv blocks get torch.ao FakeQuantize on input, weight and conv output)
so export is tested without the QAT modifier; the QAT tests exercise the real thing.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn
from torch.ao.quantization import (
    FakeQuantize,
    FusedMovingAvgObsFakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
)

from sparse_core.export import export_model

os.environ.setdefault("YOLO_OFFLINE", "1")


class QConv(nn.Module):
    """Ultralytics Conv (BN folded) with fake-quant input (uint8), weights (int8 per-channel) and conv output."""

    def __init__(self, block, fq_class):
        super().__init__()
        from ultralytics.utils.torch_utils import fuse_conv_and_bn

        self.conv = fuse_conv_and_bn(block.conv, block.bn)
        self.act = block.act
        for k in ("f", "i", "type", "np"):  # layer routing attributes Ultralytics' forward reads
            if hasattr(block, k):
                setattr(self, k, getattr(block, k))
        act = dict(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                   qscheme=torch.per_tensor_affine)
        self.input_fq, self.output_fq = fq_class(**act), fq_class(**act)
        self.weight_fq = fq_class(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                                  dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)

    def forward(self, x):
        c = self.conv
        y = F.conv2d(self.input_fq(x), self.weight_fq(c.weight), c.bias, c.stride, c.padding, c.dilation, c.groups)
        return self.act(self.output_fq(y))


def fake_quant_yolo():
    """Pruned (50%) yolov8n nc=3 with every Conv block fake-quantized and observers calibrated on random images.

    Blocks alternate plain ``FakeQuantize`` (what the guide prescribes) and ``FusedMovingAvgObsFakeQuantize``
    (torch's default QAT qconfig, whose fused op has no ONNX export until export freezes it): one export covers both.
    """
    from ultralytics.nn.modules import Conv
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.weight.numel() > 100:
                w = m.weight
                w[w.abs() <= w.abs().flatten().kthvalue(w.numel() // 2).values] = 0
        for cls_out in model.model[-1].cv3:  # class logits around 0: scores spread over (0, 1), not all ~1e-4
            cls_out[-1].bias.zero_()
        # BatchNorm statistics measured on data: activations keep unit scale through the depth instead of
        # shrinking below the smallest quantization step (which made every class score exactly 0.5)
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average
        for _ in range(3):
            model(torch.rand(4, 3, 64, 64))
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    blocks = [(n, m) for n, m in model.named_modules() if type(m) is Conv]
    for i, (name, block) in enumerate(blocks):
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, QConv(block, (FakeQuantize, FusedMovingAvgObsFakeQuantize)[i % 2]))
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 64))  # observers record ranges once
    return model, len(blocks), zeros


@pytest.fixture(scope="module")
def qdq(tmp_path_factory):
    model, n_quantized, zeros = fake_quant_yolo()
    out = tmp_path_factory.mktemp("qdq") / "deploy"
    info = export_model({"model": model, "train_args": {"imgsz": 64}, "sparsepipe": {"quantized": True}}, out)
    return out, info, model, n_quantized, zeros


def test_qdq_graph_structure(qdq):
    out, info, model, n_quantized, _ = qdq
    assert info["quantized"] is True and json.loads((out / "export.json").read_text()) == info
    proto = onnx.load(str(out / "model.onnx"))
    producers = {o: n for n in proto.graph.node for o in n.output}
    inits = {t.name: t for t in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    quantized = [n for n in convs if producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "DequantizeLinear"]
    assert len(quantized) == n_quantized  # every fake-quant conv has a DQ weight ...
    for conv in quantized:
        assert producers[conv.input[0]].op_type == "DequantizeLinear"  # ... and a DQ input
        weight = inits[producers[conv.input[1]].input[0]]
        assert weight.data_type == onnx.TensorProto.INT8  # folded: INT8 stored, not FP32 + QuantizeLinear
        assert numpy_helper.to_array(inits[producers[conv.input[1]].input[1]]).size == weight.dims[0]  # per-channel
    # the head's box/class output convs stay FP32 (no fake quant there); the DFL is exported as float reductions
    assert len(convs) - len(quantized) == 6 and info["float_head"] is True
    assert info["node_types"]["QuantizeLinear"] > 0 and info["node_types"]["DequantizeLinear"] > 0
    assert info["weight_quantize_folded"] == n_quantized
    fused = [m for m in model.modules() if isinstance(m, FusedMovingAvgObsFakeQuantize)]
    assert len(fused) == 3 * (n_quantized // 2)  # every other block used the fused kind


def test_onnxruntime_runs_integer_convs(qdq):
    out, info, model, n_quantized, _ = qdq
    assert info["ort_optimized"]["integer_ops"]["QLinearConv"] == n_quantized
    assert info["ort_optimized"]["float_convs"] == 6
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    model = model.eval().apply(torch.ao.quantization.disable_observer)  # export worked on a copy: freeze ours too
    with torch.no_grad():
        expected = model(x)[0]  # eval mode: (decoded predictions, raw dict)
    got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    assert got.shape == tuple(expected.shape) == (1, 7, 84)
    ref = expected.numpy()
    scores, ref_scores = got[:, 4:], ref[:, 4:]
    assert ref_scores.std() > 0.05 and 0.1 < ref_scores.mean() < 0.9, "scores must be non-trivial to compare"
    # A random 50%-pruned network with ~60 fake-quantized layers is chaotic: one rounding flip early on moves the
    # outputs. So the yardstick is PyTorch itself: onnxruntime may differ from the fake-quant model no more than
    # that model differs from itself when the input moves by 1e-3 (a quarter of one uint8 input step).
    with torch.no_grad():
        jitter = model(x + 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4)))[0].numpy()
    for part in (slice(0, 4), slice(4, None)):  # boxes (pixels), class scores
        ort_diff, self_diff = np.abs(got[:, part] - ref[:, part]).mean(), np.abs(jitter[:, part] - ref[:, part]).mean()
        assert ort_diff <= 1.5 * self_diff + 1e-3, (part, ort_diff, self_diff)
    assert np.corrcoef(scores.ravel(), ref_scores.ravel())[0, 1] > 0.8


def test_first_quantized_block_matches_to_one_step(qdq):
    """Before chaos sets in the graph is exact: the first conv block's quantized output equals PyTorch's fake-quant
    output to within one quantization step (rounding of the integer accumulator), for every element."""
    from onnx import helper

    out, _, model, _, _ = qdq
    proto = onnx.load(str(out / "model.onnx"))
    consumers = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    q = next(n for n in consumers[conv.output[0]] if n.op_type == "QuantizeLinear")
    dq = next(n for n in consumers[q.output[0]] if n.op_type == "DequantizeLinear")
    proto.graph.output.append(helper.make_tensor_value_info(dq.output[0], onnx.TensorProto.FLOAT, None))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    step = float(np.ravel(inits[q.input[1]])[0]) if q.input[1] in inits else None
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run([dq.output[0]], {"images": x.numpy()})[0]
    model = model.eval().apply(torch.ao.quantization.disable_observer)
    seen = []
    hook = model.model[0].output_fq.register_forward_hook(lambda _m, _i, o: seen.append(o.detach().numpy()))
    with torch.no_grad():
        model(x)
    hook.remove()
    step = step or float(model.model[0].output_fq.scale)
    assert got.shape == seen[0].shape and np.abs(got).max() > 10 * step  # non-trivial activations
    assert np.abs(got - seen[0]).max() <= step * 1.001
    # onnxruntime requantizes the int32 accumulator in fixed point: measured 3% of elements one step off
    assert (np.abs(got - seen[0]) > step / 2).mean() < 0.05


def test_int8_weights_keep_zeros_and_shrink_the_file(qdq):
    out, info, _, _, zeros = qdq
    # pruned zeros quantize to 0, tiny weights may too; the DFL's fixed arange conv (one 0) is not a Conv in ONNX
    assert info["zeros"] >= info["zeros_pytorch"] == zeros - 1
    # about one byte per conv weight (FP32 storage would need four)
    assert info["conv_params"] < info["size_bytes"] < 1.2 * info["conv_params"]


def test_export_opset_imports_only_what_it_uses(qdq):
    out, info, *_ = qdq
    proto = onnx.load(str(out / "model.onnx"))
    assert [o.domain for o in proto.opset_import] == [""] and info["opset_imports"] == {"ai.onnx": 17}
    assert info["accuracy"]["skipped"].startswith("no data yaml")  # a dict checkpoint without training data
    ds = onnx.load(str(out / info["deepsparse"]["file"]))  # the QLinearConv form DeepSparse compiles
    assert [o.domain for o in ds.opset_import] == [""] and ds.ir_version == 8
    assert info["deepsparse"]["node_types"]["QLinearConv"] == info["ort_optimized"]["integer_convs"]
    assert info["deepsparse"]["per_tensor_weights"] is False  # this model's weights are per-channel


def test_accuracy_gate_on_both_engines(tmp_path):
    """The exported QDQ model scored on onnxruntime and OpenVINO against the PyTorch fake-quant model: within a
    point here; a limit it cannot meet fails the export (previous folder kept) or, with allow_drop, is flagged."""
    from sparse_core.data.synth import synth_dataset
    from sparse_core.export import accuracy

    data = synth_dataset(tmp_path / "data", n_train=1, n_val=4, imgsz=64, seed=1, n_classes=3)
    model, *_ = fake_quant_yolo()
    ckpt = {"model": model, "train_args": {"imgsz": 64, "data": str(data)}, "sparsepipe": {"quantized": True}}
    info = export_model(ckpt, tmp_path / "deploy")
    acc = info["accuracy"]
    assert set(acc["map50_95"]) == {"pytorch_fake_quant", "onnxruntime", "openvino"}
    assert abs(acc["drop"]["onnxruntime"]) <= 0.01 and acc["flagged"] is False
    assert json.loads((tmp_path / "deploy" / "export.json").read_text())["accuracy"] == acc
    with pytest.raises(RuntimeError, match="mAP50-95"):
        accuracy.measure(ckpt, tmp_path / "deploy", data, 64, allow_drop=False, max_drop=-1.0)
    flagged = accuracy.measure(ckpt, tmp_path / "deploy", data, 64, allow_drop=True, max_drop=-1.0)
    assert flagged["flagged"] is True


def test_openvino_form_runs_silu_in_float(qdq):
    """model.openvino.onnx: the conv -> SiLU quantizer pairs dropped (OpenVINO then fuses int8 conv + SiLU + the
    next quantizer into one kernel), every other Q/DQ kept; same detections to within the dropped rounding; the
    file `deployment_model`, `benchmark` and `val` pick for OpenVINO (model.onnx for onnxruntime)."""
    from sparse_core.bench import benchmark
    from sparse_core.export.graph import deployment_model

    out, info, *_ = qdq
    ov_path = out / info["openvino"]["file"]
    assert deployment_model(out, "openvino") == ov_path and deployment_model(out, "onnxruntime") == out / "model.onnx"
    assert deployment_model(out / "model.onnx", "openvino") == ov_path
    base, ovf = onnx.load(str(out / "model.onnx")), onnx.load(str(ov_path))
    n_q = [sum(n.op_type == "QuantizeLinear" for n in m.graph.node) for m in (base, ovf)]
    dropped = info["openvino"]["float_silu_inputs"]
    assert dropped > 0 and n_q[1] == n_q[0] - dropped
    producers = {o: n for n in ovf.graph.node for o in n.output}
    sig = [n for n in ovf.graph.node if n.op_type == "Sigmoid"]
    assert sig and all(producers[n.input[0]].op_type == "Conv" for n in sig if n.input[0] in producers
                       and producers[n.input[0]].op_type in ("Conv", "DequantizeLinear"))
    assert sum(n.op_type == "Conv" for n in ovf.graph.node) == sum(n.op_type == "Conv" for n in base.graph.node)
    x = np.random.default_rng(3).random((1, 3, 64, 64), dtype=np.float32)
    got = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
           for m in (base, ovf)]
    # one rounding fewer per conv: the same detections up to quantization noise (a random-weight model's boxes
    # move by a few grid steps, so the check is correlation and the typical error, not the worst element)
    assert np.corrcoef(got[0].ravel(), got[1].ravel())[0, 1] > 0.99
    assert np.median(np.abs(got[0] - got[1])) <= 0.02 * np.abs(got[0]).max()
    res = benchmark(out, engine="openvino", iterations=2, warmup=1, threads=1)
    assert res["model"] == str(ov_path)
