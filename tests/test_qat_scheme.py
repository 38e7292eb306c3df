"""QuantizationModifier resolution and model surgery, without training (real Ultralytics models, torch.ao pieces).

Seed 000's scheme recipe and seed 002's legacy recipe are resolved on the YOLO models they target; what must hold
is where fake quantization ends up, that parameters and masks survive, and that the eval path is the folded conv.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.ao.quantization import FakeQuantizeBase

from sparse_core.errors import NotSupportedYet, UserError
from sparse_core.quantization import prepare
from sparse_core.quantization.modules import ConvBn2d
from sparse_core.recipe import load_recipe

os.environ.setdefault("YOLO_OFFLINE", "1")
RECIPES = os.path.join(os.path.dirname(__file__), "recipes")
SEED000 = os.path.join(RECIPES, "seed000_yolov8m_pruned80_quant_transfer.yaml")
SEED002 = os.path.join(RECIPES, "seed002_yolov5s_pruned75_quant.yaml")
SHORT = {"num_epochs": 3, "qat_start_epoch": 1, "observer_freeze_epoch": 2, "bn_freeze_epoch": 2}


def yolo(cfg: str):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return DetectionModel(cfg, nc=2, verbose=False)


def quant_modifier(path: str, args=None, text: str | None = None):
    recipe = load_recipe(text if text is not None else path, args)
    return recipe.of_type("QuantizationModifier")[0]


def fq(module, attr):
    child = getattr(module, attr, None)
    return child if isinstance(child, FakeQuantizeBase) else None


@pytest.fixture(scope="module")
def v8_seed000():
    model = yolo("yolov8n.yaml")
    before = {n: p for n, p in model.named_parameters()}
    report = prepare(model, quant_modifier(SEED000, SHORT), "seed000")
    return model, report, before


def test_seed000_overrides_ignore_and_default_scheme(v8_seed000):
    model, report, _ = v8_seed000
    get = model.get_submodule
    # default scheme: conv input uint8 asymmetric per-tensor, weights int8 symmetric per-channel, no output
    first = get("model.0.conv")
    assert isinstance(first, ConvBn2d)
    assert fq(first, "input_quant").dtype == torch.quint8 and fq(first, "input_quant").qscheme == torch.per_tensor_affine
    assert first.weight_fake_quant.qscheme == torch.per_channel_symmetric and first.weight_fake_quant.dtype == torch.qint8
    assert fq(first, "output_quant") is None
    # overrides: SiLU output asymmetric 8 bit (input keeps the default), next conv / residual input null
    act = get("model.2.cv1.act")
    assert fq(act, "output_quant").qscheme == torch.per_tensor_affine and fq(act, "input_quant") is not None
    assert fq(get("model.2.m.0.cv1.conv"), "input_quant") is None
    assert isinstance(get("model.2.m.0.cv1.conv").weight_fake_quant, FakeQuantizeBase)  # weights keep the default
    assert fq(get("model.2.m.0.add_input_0"), "input_quant") is None
    assert fq(get("model.2.m.0.add_input_1"), "input_quant") is not None  # not overridden: default input quant
    assert fq(get("model.7.conv"), "input_quant") is None and fq(get("model.7.conv"), "output_quant") is not None
    # ignore by type and by name; the DFL decoding stays float
    assert all(fq(m, "input_quant") is None for n, m in model.named_modules() if type(m).__name__ in ("Upsample", "Concat"))
    dfl = get("model.22.dfl.conv")
    assert type(dfl) is torch.nn.Conv2d and not any(isinstance(m, FakeQuantizeBase) for m in dfl.modules())
    # head output convs (plain Conv2d): torch.ao QAT conv with input + weight fake quant
    head = get("model.22.cv3.0.2")
    assert type(head).__name__ == "Conv2d" and head.__module__.startswith("torch.ao.nn.qat")
    assert fq(head, "input_quant") is not None
    # yolov8n has fewer C2f repeats than the yolov8m the recipe was written for: reported, not fatal
    assert report.unmatched == {"scheme_overrides": [f"model.{i}.m.1.{s}" for i in (12, 15, 18, 21)
                                                     for s in ("cv1.conv", "cv2.act")]}
    assert report.counts() == {"fused_conv_bn": 57, "input_quant": 124, "weight_quant": 63, "output_quant": 22}


def test_prepare_keeps_parameters_and_names(v8_seed000):
    model, _, before = v8_seed000
    after = dict(model.named_parameters())
    conv_weights = [n for n in before if n.endswith("conv.weight")]
    assert conv_weights and all(after[n] is before[n] for n in conv_weights)  # same objects: optimizer + masks
    assert {id(p) for p in after.values()} == {id(p) for p in before.values()}
    assert "model.0.conv.bn.weight" in after and "model.0.bn.weight" not in after


def test_eval_forward_is_the_folded_conv_and_zeros_stay():
    from ultralytics.nn.modules import Conv

    torch.manual_seed(0)
    block = Conv(8, 16, 3)
    with torch.no_grad():
        block.conv.weight[block.conv.weight.abs() < 0.05] = 0
        block.bn.running_mean.uniform_(-0.5, 0.5)
        block.bn.running_var.uniform_(0.5, 2.0)
        block.bn.weight.uniform_(0.5, 1.5)
    zeros = int((block.conv.weight == 0).sum())
    fused = ConvBn2d.fuse(block.conv, block.bn).eval()
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        ref = block.bn.eval()(block.conv(x))
        assert torch.allclose(fused(x), ref, atol=1e-5)  # Identity weight quant: exactly Conv+BN
        assert torch.allclose(torch.nn.Module.__call__(fused.train().eval(), x), ref, atol=1e-5)
        weight, _ = fused.folded()
    assert int((weight == 0).sum()) == zeros  # folding BN scales rows; a zero stays a zero


def test_seed002_legacy_resolution_on_yolov5u():
    model = yolo("yolov5nu.yaml")
    mod = quant_modifier(SEED002)
    report = prepare(model, mod, "seed002")
    assert report.generation == "legacy"
    acts = [m for n, m in model.named_modules() if type(m).__name__ == "SiLU"]
    assert acts and all(fq(a, "input_quant") is not None and fq(a, "output_quant") is None for a in acts)
    convs = [m for m in model.modules() if isinstance(m, ConvBn2d)]
    assert all(fq(c, "input_quant") is not None and fq(c, "output_quant") is None for c in convs)  # no conv outputs
    assert all(isinstance(c.weight_fake_quant, FakeQuantizeBase) for c in convs)
    assert not any(isinstance(m, FakeQuantizeBase) for m in model.get_submodule("model.24.dfl").modules())


def test_bad_quantization_fields():
    base = "quantization_modifiers:\n  - !QuantizationModifier\n    start_epoch: 0\n"
    model = yolo("yolov8n.yaml")
    with pytest.raises(UserError, match="mixes legacy fields \\(submodules\\) with scheme fields \\(ignore\\)"):
        prepare(model, quant_modifier("", text=base + "    submodules: [model]\n    ignore: [Concat]\n"), "r.yaml:2")
    four_bit = base + "    scheme:\n      weights:\n        num_bits: 4\n"
    with pytest.raises(NotSupportedYet, match="num_bits: 4"):
        prepare(yolo("yolov8n.yaml"), quant_modifier("", text=four_bit), "r.yaml:2")
    with pytest.raises(UserError, match="Concat: input fake quantization needs a tensor input"):
        m = yolo("yolov8n.yaml")
        prepare(m, quant_modifier("", text=base), "r.yaml:2")  # nothing ignored: Concat gets input quant
        m(torch.zeros(1, 3, 64, 64))


def test_strict_makes_unmatched_names_an_error():
    text = open(SEED000).read().replace("    ignore: ['Upsample'", "    strict: true\n    ignore: ['Upsample'")
    with pytest.raises(UserError, match="scheme_overrides: model.12.m.1.cv1.conv.*strict: true"):
        prepare(yolo("yolov8n.yaml"), quant_modifier("", SHORT, text=text), "seed000")


def test_segmenter_qat_exports_integer_convs(tmp_path):
    from ultralytics.nn.tasks import SegmentationModel

    from sparse_core.export import export_model

    torch.manual_seed(0)
    model = SegmentationModel("yolov8n-seg.yaml", nc=2, verbose=False)
    report = prepare(model, quant_modifier(SEED000, {"qat_start_epoch": 0}), "seed000")
    assert report.counts()["fused_conv_bn"] == 66  # the Proto's Conv blocks too
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 64))  # observers see data once
    info = export_model({"model": model.eval(), "train_args": {"imgsz": 64}, "sparsepipe": {"quantized": True}},
                        tmp_path / "seg")
    assert info["task"] == "segment" and len(info["outputs"]) == 2  # detections + mask prototypes
    assert info["ort_optimized"]["integer_ops"]["QLinearConv"] >= 50
