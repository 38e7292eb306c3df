"""Structured pruning (GMPruningModifier mask_type: filter) and physical thinning of Ultralytics YOLO models.

Masks come from the real RecipeManager; thinning must give a smaller dense model computing what the masked model
computed, with the parameter/MAC drop that the surviving channels predict, and must save, load, train, validate
and export like any checkpoint.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from sparse_core.errors import NotSupportedYet, UserError
from sparse_core.modifiers import RecipeManager
from sparse_core.recipe import load_recipe
from sparse_core.structured import conv_macs, conv_params, keep_count, thin_model, trace
from sparse_core.structured.thin import THINNED_ATTR

os.environ.setdefault("YOLO_OFFLINE", "1")
IMGSZ = 64
RECIPE = """
pruning_modifiers:
  - !{type}
    params: {params}
    init_sparsity: 0.05
    final_sparsity: {final}
    start_epoch: 0.0
    end_epoch: 2.0
    update_frequency: 0.5
    mask_type: filter{extra}
"""

PLAIN_RECIPE = RECIPE.format(type="GMPruningModifier", params="__ALL_PRUNABLE__", final=0.5, extra="")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """64 px models run as fast on one thread, and a shared 2-core machine makes 2-thread OpenMP barriers crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(cfg: str, seed: int = 0) -> nn.Module:
    """A random-init model whose BatchNorms look trained (non-trivial statistics, non-zero beta)."""
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    torch.manual_seed(seed)
    model = (SegmentationModel if "-seg" in cfg else DetectionModel)(cfg, nc=3, verbose=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def prune(model: nn.Module, final: float = 0.5, params: str = "__ALL_PRUNABLE__",
          type_: str = "GMPruningModifier", extra: str = "") -> RecipeManager:
    """Run a filter GMP schedule to its end on ``model`` (weights masked in place)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mgr = RecipeManager(load_recipe(RECIPE.format(type=type_, params=params, final=final, extra=extra)), model, opt,
                        steps_per_epoch=2)
    mgr.initialize(0.0)
    for epoch in (0.5, 1.0, 1.5, 2.0):
        mgr.update(epoch)
    mgr.apply_masks()
    return mgr


def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Eval predictions (Detect: decoded boxes+scores; Segment: those + mask protos), flattened."""
    with torch.no_grad():
        y = model(x)[0]
    return list(y) if isinstance(y, (list, tuple)) else [y]


def live_channel_costs(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(conv params, conv MACs) counting only channels that carry signal in the *masked* model: output channels
    whose filter is not all zero, input channels not identically zero on ``x`` — what thinning must leave."""
    params = macs = 0

    def hook(m, inputs, output):
        nonlocal params, macs
        live_in = int((inputs[0].abs().flatten(2).sum(2) > 0).any(0).sum())
        live_out = int((m.weight.detach().flatten(1) != 0).any(1).sum())
        k = m.kernel_size[0] * m.kernel_size[1]
        params += live_in * live_out * k
        macs += live_in * live_out * k * output.shape[2] * output.shape[3]

    hooks = [m.register_forward_hook(hook) for m in model.modules() if type(m) is nn.Conv2d]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return params, macs


def test_trace_finds_yolov8_couplings():
    model = build("yolov8n.yaml")
    g = trace(model)
    assert g.barriers == []
    c2f = {name: (first, second) for name, first, second in g.splits}
    assert set(c2f) == {f"model.{i}" for i in (2, 4, 6, 8, 12, 15, 18, 21)}
    by_conv = {sp.conv: sp for sp in g.spaces if sp.conv}
    # backbone C2f: shortcut adds the bottleneck output to the second chunk half, channel by channel
    first, second = c2f["model.2"]
    m0 = by_conv["model.2.m.0.cv2.conv"]
    assert [g.find(s) for s in second] == [g.find(m0.start + i) for i in range(m0.size)]
    assert {g.find(s) for s in first}.isdisjoint({g.find(s) for s in second})
    # head C2f (no shortcut): bottleneck output is its own space
    h0 = by_conv["model.12.m.0.cv2.conv"]
    assert all(g.find(h0.start + i) == h0.start + i for i in range(h0.size))
    # model outputs and the image are frozen; Detect's hidden convs are prunable
    _, frozen = g.units()
    for name in ("model.22.cv2.0.2", "model.22.cv3.2.2"):
        assert all(g.find(by_conv[name].start + i) in frozen for i in range(by_conv[name].size)), name
    assert g.spaces[0].conv == "" and all(g.find(s) in frozen for s in range(3))  # image channels
    prunable = {g.spaces[i].conv for group in g.groups() for i in group.spaces}
    assert "model.22.cv2.0.1.conv" in prunable and "model.22.cv2.0.2" not in prunable
    # a C2f group prunes its chunk halves as two equal segments
    group = next(gr for gr in g.groups() if gr.split == "model.2")
    assert [len(s) for s in group.segments] == [16, 16]


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolov5nu.yaml", "yolov3-tinyu.yaml", "yolov8n-seg.yaml"])
def test_thinned_model_equals_masked_model(cfg):
    model = build(cfg)
    mgr = prune(model, 0.5)
    mgr.finalize()
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    masked = copy.deepcopy(model)
    expected_params, expected_macs = live_channel_costs(masked, x)
    dense_params, dense_macs = conv_params(build(cfg)), conv_macs(build(cfg), IMGSZ)

    report = thin_model(model, imgsz=IMGSZ)
    assert getattr(model, THINNED_ATTR) is True and report["channels_removed"] > 0 and report["barriers"] == []
    before, after = outputs(masked, x), outputs(model, x)
    assert [t.shape for t in after] == [t.shape for t in before]  # same predictions layout (boxes, classes, masks)
    assert max(float((a - b).abs().max()) for a, b in zip(after, before)) <= 1e-4
    before64 = outputs(copy.deepcopy(masked).double(), x.double())
    after64 = outputs(copy.deepcopy(model).double(), x.double())
    assert max(float((a - b).abs().max()) for a, b in zip(after64, before64)) <= 1e-9  # exact up to rounding

    # every surviving channel is one the masked model used, and nothing else: params/MACs exactly as predicted
    plain_convs = sum(m.weight.numel() for m in model.modules() if type(m) is nn.Conv2d)
    assert plain_convs == expected_params
    transposed = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.ConvTranspose2d))
    assert conv_params(model) == expected_params + transposed
    if not transposed:
        assert conv_macs(model, IMGSZ) == expected_macs
    # half of every coupled group went: convs inside the network lose ~3/4, input/output convs ~1/2
    assert 0.2 < conv_macs(model, IMGSZ) / dense_macs < 0.4
    assert 0.2 < conv_params(model) / dense_params < 0.4


def test_c2f_halves_stay_equal_and_widths_round_to_multiple():
    model = build("yolov8n.yaml")
    mgr = prune(model, 0.6)
    mgr.finalize()
    thin_model(model, imgsz=IMGSZ)
    from ultralytics.nn.modules import C2f

    for name, m in model.named_modules():
        if isinstance(m, C2f):
            assert m.cv1.conv.out_channels == 2 * m.c, name
            assert m.forward_split(torch.rand(1, m.cv1.conv.in_channels, 8, 8)).shape[1] == m.cv2.conv.out_channels
    assert model.model[0].conv.out_channels == keep_count(16, 0.6) == 8
    assert model.model[7].conv.out_channels == keep_count(256, 0.6) == 104
    assert keep_count(12, 0.6) == 5 and keep_count(4, 0.9) == 1


def test_channel_multiple_keeps_int8_friendly_widths():
    """channel_multiple: 16 -> every pruned conv keeps a multiple of 16 output channels, none below 16."""
    model = build("yolov8n.yaml")
    dense = {n: m.out_channels for n, m in build("yolov8n.yaml").named_modules() if type(m) is nn.Conv2d}
    prune(model, 0.75, extra="\n    channel_multiple: 16").finalize()
    thin_model(model, imgsz=IMGSZ)
    widths = {n: m.out_channels for n, m in model.named_modules() if type(m) is nn.Conv2d}
    changed = {n: w for n, w in widths.items() if w != dense[n]}
    assert len(changed) > 30 and all(w % 16 == 0 for w in changed.values()), changed
    assert widths["model.0.conv"] == 16 and widths["model.9.cv2.conv"] == 64  # 16 kept whole; 256 -> 64
    assert keep_count(24, 0.75, 16) == 16 and keep_count(8, 0.75, 16) == 8 and keep_count(256, 0.6, 16) == 112
    bad = RECIPE.format(type="GMPruningModifier", params="__ALL_PRUNABLE__", final=0.5,
                        extra="\n    channel_multiple: 0")
    with pytest.raises(UserError, match="channel_multiple"):
        load_recipe(bad)


def test_selection_and_schedule():
    # only the backbone's first two convs selected: only their channels go, nothing else changes
    model = build("yolov8n.yaml")
    mgr = prune(model, 0.5, params="['model.0.conv.weight', 'model.1.conv.weight']")
    assert {g["convs"][0] for g in mgr.pruners[0].sparsity_report()} == {"model.0.conv", "model.1.conv"}
    mgr.finalize()
    dense = build("yolov8n.yaml")
    thin_model(model, imgsz=IMGSZ)
    assert model.model[0].conv.out_channels == 8 and model.model[1].conv.out_channels == 16
    assert model.model[2].cv1.conv.out_channels == dense.model[2].cv1.conv.out_channels

    # cubic schedule: sparsity rises over updates, pruned channels stay pruned; state round-trips (resume)
    model = build("yolov8n.yaml")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mgr = RecipeManager(load_recipe(PLAIN_RECIPE),
                        model, opt)
    mgr.initialize(0.0)
    pruned = []
    for epoch in (0.5, 1.0):
        mgr.update(epoch)
        pruned.append([set(p) for p in mgr.pruners[0].pruned])
    assert all(a <= b for a, b in zip(*pruned)) and sum(map(len, pruned[0])) < sum(map(len, pruned[1]))
    state = mgr.state_dict()
    other = build("yolov8n.yaml")
    mgr2 = RecipeManager(mgr.recipe, other, torch.optim.SGD(other.parameters(), lr=0.01))
    mgr2.initialize(0.0)
    mgr2.load_state_dict(state)
    mgr.update(2.0)
    mgr2.update(2.0)
    assert [sorted(p) for p in mgr.pruners[0].pruned] == [sorted(p) for p in mgr2.pruners[0].pruned]


def test_bad_recipes_and_models():
    with pytest.raises(NotSupportedYet, match="global_sparsity"):
        prune(build("yolov8n.yaml"), type_="GlobalMagnitudePruningModifier")
    with pytest.raises(UserError, match="select no prunable channel"):
        prune(build("yolov8n.yaml"), params="['model.22.cv2.0.2.weight', 'model.22.cv3.0.2.weight']")
    combined = PLAIN_RECIPE + (
        "quantization_modifiers:\n  - !QuantizationModifier\n    start_epoch: 1.0\n")
    with pytest.raises(NotSupportedYet, match="then QAT on its thinned last.pt"):
        RecipeManager(load_recipe(combined), build("yolov8n.yaml")).initialize(0.0)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    with pytest.raises(UserError, match="mask_type: filter: structured pruning needs an Ultralytics model"):
        RecipeManager(load_recipe(PLAIN_RECIPE),
                      plain).initialize(0.0)
    # a dense model has nothing identically zero: thinning is a no-op and does not mark it
    dense = build("yolov8n.yaml")
    assert thin_model(dense, imgsz=IMGSZ)["channels_removed"] == 0 and not hasattr(dense, THINNED_ATTR)


@pytest.mark.slow
def test_train_thin_save_validate_export_retrain(tmp_path):
    """Real Ultralytics run: the recipe masks channels, best.pt/last.pt come out thinned, and the thinned
    checkpoint loads, validates (.pt and .onnx), exports to ONNX that onnxruntime runs, and trains on as is."""
    from sparse_core.checkpoint import checkpoint_model, load_checkpoint, sparsepipe_meta
    from sparse_core.data.synth import synth_dataset
    from sparse_core.export import export_model
    from sparse_core.integrations.ultralytics import train
    from sparse_core.integrations.ultralytics.run import val
    from sparse_core.onnx_val import val_onnx

    # The thinned model must detect something: comparing the ONNX and PyTorch mAP of a model that finds nothing
    # would compare two zeros. So, as users do: a dense model first (the demo's fast settings; measured mAP50 > 0.1
    # in a 30-epoch run on 64 images at 64 px, 0.8 at its end), then structured pruning of it, then a short fine-tune.
    fast = {"mosaic": 0.0, "optimizer": "AdamW", "lr0": 0.003, "warmup_epochs": 1}
    data = synth_dataset(tmp_path / "data", n_train=64, n_val=16, imgsz=IMGSZ, seed=3)
    dense = train(model="yolov8n.yaml", data=str(data), epochs=30, imgsz=IMGSZ, batch=16, workers=0,
                  project=tmp_path, name="dense", plots=False, extra_args=fast)
    recipe = tmp_path / "filter.yaml"
    # 40% of channels: measured mAP50 0.81 -> 0.75 after 6 epochs (50% collapsed to 0 and did not recover in 10)
    recipe.write_text("modifiers:\n  - !EpochRangeModifier\n    start_epoch: 0\n    end_epoch: 6\n"
                      + RECIPE.format(type="GMPruningModifier", params="__ALL_PRUNABLE__", final=0.4, extra="")
                      .replace("end_epoch: 2.0", "end_epoch: 1.0"))
    assert dense["map50"] > 0.3, dense
    summary = train(model=dense["weights"]["best"], data=str(data), recipe=str(recipe), imgsz=IMGSZ, batch=16,
                    workers=0, project=tmp_path, name="filter", plots=False, extra_args=fast)
    report = json.loads((tmp_path / "filter" / "structured.json").read_text())
    assert report["best"]["macs_ratio"] < 0.5 and report["best"]["parity_max_abs_diff"] <= 1e-3
    dense_params = conv_params(build("yolov8n.yaml"))
    for kind in ("best", "last"):
        ckpt = load_checkpoint(summary["weights"][kind])
        model = checkpoint_model(ckpt)
        assert getattr(model, THINNED_ATTR)
        assert conv_params(model) == report[kind]["conv_params_after"] < dense_params / 2.5
        assert sparsepipe_meta(ckpt)["structured"]["channels_removed"] == report[kind]["channels_removed"]

    pt_metrics = val(summary["weights"]["best"], data=str(data), imgsz=IMGSZ)
    info = export_model(summary["weights"]["best"], tmp_path / "deploy", imgsz=IMGSZ)
    # the DFL's fixed 16-weight conv exports as float reductions, so the ONNX graph holds 16 conv weights fewer
    assert info["parity_max_abs_diff"] <= 1e-4 and info["conv_params"] == report["best"]["conv_params_after"] - 16
    sess = ort.InferenceSession(str(tmp_path / "deploy" / "model.onnx"), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"images": np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)})[0]
    assert y.shape == (1, 4 + 3, (IMGSZ // 8) ** 2 + (IMGSZ // 16) ** 2 + (IMGSZ // 32) ** 2)
    onnx_metrics = val_onnx(tmp_path / "deploy", data)
    assert pt_metrics["map50"] > 0.05, pt_metrics  # a comparison of two zeros would prove nothing
    assert abs(onnx_metrics["map50"] - pt_metrics["map50"]) <= 0.02

    again = train(model=summary["weights"]["best"], data=str(data), epochs=1, imgsz=IMGSZ, batch=8, workers=0,
                  project=tmp_path, name="retrain", plots=False)
    model = checkpoint_model(load_checkpoint(again["weights"]["best"]))
    assert conv_params(model) == report["best"]["conv_params_after"]  # trained as thinned, not rebuilt from yaml
