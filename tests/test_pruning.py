"""RecipeManager on real torch models: GMP schedule vs SparseML's formulas, masks surviving SGD momentum and weight
decay, resume equivalence, LR modifiers, selectors, EMA masking, finalize, and the not-supported-yet paths."""

from __future__ import annotations

import copy
import io
import math
import os

import pytest
import torch

from sparse_core.errors import NotSupportedYet, UserError
from sparse_core.modifiers import RecipeManager, interpolate, prunable_names
from sparse_core.modifiers import registry
from sparse_core.recipe import load_recipe

RECIPES = os.path.join(os.path.dirname(__file__), "recipes")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread avoids OpenMP spin contention on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class SmallNet(torch.nn.Module):
    """Three prunable layers, each large enough (>= 600 weights) that one weight is < 1e-3 of the layer."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(32)
        self.conv2 = torch.nn.Conv2d(32, 64, 3, padding=1)
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


def batch(step: int):
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen)


def train_step(model, opt, step):
    x, y = batch(step)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def make(recipe_text: str, seed: int = 0, steps_per_epoch: int = 4):
    torch.manual_seed(seed)
    model = SmallNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, opt, RecipeManager(load_recipe(recipe_text), model, opt, steps_per_epoch=steps_per_epoch)


def zeros(model) -> dict[str, float]:
    return {n: float((p == 0).float().mean()) for n, p in model.named_parameters() if n in prunable_names(model)}


GMP = """
pruning_modifiers:
  - !{type}
    params: {params}
    init_sparsity: 0.05
    final_sparsity: {final}
    start_epoch: 1.0
    end_epoch: 5.0
    update_frequency: 0.5
    inter_func: {inter_func}
"""


@pytest.mark.parametrize("inter_func", ["linear", "cubic", "inverse_cubic"])
def test_gmp_schedule_follows_formula_and_zeros_stay_zero(inter_func):
    model, opt, mgr = make(GMP.format(type="GMPruningModifier", params="__ALL_PRUNABLE__", final=0.8,
                                      inter_func=inter_func))
    mgr.initialize(0.0)
    seen_updates = []
    steps_per_epoch, step = 4, 0
    while step < 7 * steps_per_epoch:  # through end_epoch 5 and two more epochs
        epoch = step / steps_per_epoch
        if mgr.update(epoch):
            expected = interpolate(epoch, 1.0, 5.0, 0.05, 0.8, inter_func)
            for name, measured in zeros(model).items():
                assert abs(measured - expected) < 1e-3, (epoch, name, measured, expected)
            seen_updates.append(epoch)
        train_step(model, opt, step)
        step += 1
    assert seen_updates == [1.0 + 0.5 * k for k in range(9)]  # start, every 0.5 epoch, end
    final = zeros(model)
    assert all(abs(v - 0.8) <= 0.005 for v in final.values()), final
    if inter_func != "cubic":
        return  # the 50-step revival check below runs once, on SparseML's default schedule

    masks = {n: (p == 0).clone() for n, p in model.named_parameters() if n in final}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for extra in range(50):  # SGD momentum + weight decay must not revive pruned weights
        mgr.update(7 + extra / steps_per_epoch)
        train_step(model, opt, 100 + extra)
    for name, param in model.named_parameters():
        if name in masks:
            assert torch.all(param[masks[name]] == 0), name
            assert not torch.equal(param[~masks[name]], before[name][~masks[name]]), f"{name} did not train"
            buf = opt.state[param]["momentum_buffer"]
            assert torch.all(buf[masks[name]] == 0), f"{name}: momentum of pruned weights"
    sd = mgr.state_dict()
    assert set(sd["masks"]) == set(final) and all(m.dtype == torch.bool for m in sd["masks"].values())


def test_gmp_inter_func_formulas_match_sparseml():
    # SparseML: x = progress; linear x, cubic 1-(1-x)^3, inverse_cubic 1-(1-x)^(1/3); clamped outside the range
    assert interpolate(3.0, 1.0, 5.0, 0.0, 1.0, "linear") == pytest.approx(0.5)
    assert interpolate(3.0, 1.0, 5.0, 0.0, 1.0, "cubic") == pytest.approx(1 - 0.5**3)
    assert interpolate(3.0, 1.0, 5.0, 0.0, 1.0, "inverse_cubic") == pytest.approx(1 - 0.5 ** (1 / 3))
    assert interpolate(0.0, 1.0, 5.0, 0.05, 0.8, "cubic") == 0.05
    assert interpolate(9.0, 1.0, 5.0, 0.05, 0.8, "cubic") == 0.8


def test_per_param_final_sparsity_and_global():
    text = GMP.format(type="GMPruningModifier", params="[conv1.weight, conv2.weight, 're:fc\\.w.*']",
                      final="[0.3, 0.6, 0.9]", inter_func="linear")
    model, opt, mgr = make(text)
    mgr.initialize(0.0)
    mgr.update(5.0)
    got = zeros(model)
    assert got["conv1.weight"] == pytest.approx(0.3, abs=1e-3)
    assert got["conv2.weight"] == pytest.approx(0.6, abs=1e-3)
    assert got["fc.weight"] == pytest.approx(0.9, abs=1e-3)

    model, opt, mgr = make(GMP.format(type="GlobalMagnitudePruningModifier", params="__ALL_PRUNABLE__", final=0.7,
                                      inter_func="cubic"))
    mgr.initialize(0.0)
    mgr.update(5.0)
    overall, per_layer = mgr.sparsity()
    assert overall == pytest.approx(0.7, abs=1e-3)
    assert max(per_layer.values()) - min(per_layer.values()) > 0.01  # one threshold, unequal layers


def test_resume_from_state_dict_matches_uninterrupted_run():
    text = GMP.format(type="GMPruningModifier", params="__ALL_PRUNABLE__", final=0.75, inter_func="cubic")
    model, opt, mgr = make(text)
    mgr.initialize(0.0)
    steps_per_epoch, cut, total = 4, 11, 26  # cut mid-epoch, mid-schedule
    for step in range(cut):
        mgr.update(step / steps_per_epoch)
        train_step(model, opt, step)
    buf = io.BytesIO()  # what the integration writes into the checkpoint
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "manager": mgr.state_dict()}, buf)

    for step in range(cut, total):
        mgr.update(step / steps_per_epoch)
        train_step(model, opt, step)

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model2, opt2, mgr2 = make(text, seed=123)  # different init: everything must come from the checkpoint
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    mgr2.initialize(cut / steps_per_epoch)
    mgr2.load_state_dict(ckpt["manager"])
    assert mgr2.epoch == pytest.approx((cut - 1) / steps_per_epoch)
    for step in range(cut, total):
        mgr2.update(step / steps_per_epoch)
        train_step(model2, opt2, step)
    for (name, p1), (_, p2) in zip(model.named_parameters(), model2.named_parameters()):
        assert torch.allclose(p1, p2, atol=1e-6), name
    for name, mask in mgr.state_dict()["masks"].items():
        assert torch.equal(mask, mgr2.state_dict()["masks"][name])


def test_constant_pruning_keeps_existing_zeros_and_finalize_leaves_plain_model():
    text = "pruning_modifiers:\n  - !ConstantPruningModifier\n    start_epoch: 0\n    params: ['re:conv.*']\n"
    model, opt, mgr = make(text)
    with torch.no_grad():
        model.conv1.weight[:4] = 0
        model.conv2.weight.view(-1)[::3] = 0
    zero1, zero2 = model.conv1.weight == 0, model.conv2.weight == 0
    mgr.initialize(0.0)
    for step in range(10):
        mgr.update(step / 4)
        train_step(model, opt, step)
    assert torch.all(model.conv1.weight[zero1] == 0) and torch.all(model.conv2.weight[zero2] == 0)
    assert "fc.weight" not in mgr.masks and "conv1.bias" not in mgr.masks  # regex skips 1-D params

    ema = copy.deepcopy(model)  # e.g. Ultralytics' EMA copy: masked by parameter name
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    mgr.apply_masks(ema)
    assert torch.all(ema.conv1.weight[zero1] == 0) and torch.all(ema.conv1.weight[~zero1] != 0)

    mgr.finalize()
    assert not opt._optimizer_step_post_hooks and not opt._optimizer_step_pre_hooks
    assert torch.all(model.conv1.weight[zero1] == 0)
    assert all(type(m).__module__.startswith("torch.nn") for m in model.modules() if m is not model)


def test_lr_modifiers_set_lr_and_report_active():
    text = """
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: 10
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: 2
    lr_func: linear
    init_lr: 0.0
    final_lr: 0.01
    param_groups: [1]
  - !LearningRateFunctionModifier
    start_epoch: 4
    end_epoch: 8
    lr_func: cosine
    init_lr: 0.01
    final_lr: 0.0001
"""
    torch.manual_seed(0)
    model = SmallNet()
    convs = [p for n, p in model.named_parameters() if n.startswith("conv")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("conv")]
    opt = torch.optim.SGD([{"params": convs}, {"params": rest}], lr=0.5)
    mgr = RecipeManager(load_recipe(text), model, opt)
    mgr.initialize(0.0)
    mgr.update(1.0)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.005) and opt.param_groups[0]["lr"] == 0.5
    assert mgr.lr_active(1.0) and not mgr.lr_active(3.0) and mgr.lr_active(6.0) and not mgr.lr_active(9.0)
    mgr.update(6.0)  # cosine half way: 0.0001 + 0.5 * (0.01 - 0.0001) * (1 + cos(pi / 2))
    expected = 0.0001 + 0.5 * 0.0099 * (1 + math.cos(math.pi * 0.5))
    assert opt.param_groups[0]["lr"] == pytest.approx(expected) == opt.param_groups[1]["lr"]


def test_errors_selector_quantization_structured(monkeypatch):
    text = GMP.format(type="GMPruningModifier", params="['re:^backbone\\..*']", final=0.5, inter_func="cubic")
    model, opt, mgr = make(text)
    with pytest.raises(UserError, match=r"<recipe>:3: GMPruningModifier: params: selector 're:\^backbone"):
        mgr.initialize(0.0)

    recipe = load_recipe(os.path.join(RECIPES, "seed000_yolov8m_pruned80_quant_transfer.yaml"))
    model = SmallNet()
    # without a registered executor (sparse_core.quantization registers one) the modifier is refused
    monkeypatch.delitem(registry.executors(), "QuantizationModifier", raising=False)
    with pytest.raises(NotSupportedYet, match=r"seed000_yolov8m_pruned80_quant_transfer.yaml:31: QuantizationModifier"):
        RecipeManager(recipe, model, torch.optim.SGD(model.parameters(), lr=0.1)).initialize(0.0)

    text = GMP.format(type="GMPruningModifier", params="__ALL_PRUNABLE__", final=0.5, inter_func="cubic")
    model, opt, mgr = make(text + "    mask_type: channel\n")  # filter: structured pruning, tests/test_structured.py
    with pytest.raises(NotSupportedYet, match="mask_type: 'channel'"):
        mgr.initialize(0.0)


def test_registered_handler_runs_instead_of_not_supported(monkeypatch):
    calls = []

    class Recorder:
        def __init__(self, mod, manager, where):
            self.mod = mod

        def initialize(self, epoch):
            pass  # the manager's first update follows at the same epoch

        def update(self, epoch):
            calls.append((self.mod.type_name, epoch))
            return False

        def finalize(self):
            pass

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    assert isinstance(Recorder(None, None, ""), registry.ModifierExecutor)  # the typed protocol
    monkeypatch.setitem(registry.executors(), "QuantizationModifier", [(None, Recorder)])
    text = "quantization_modifiers:\n  - !QuantizationModifier\n    start_epoch: 2\n"
    model, opt, mgr = make(text)
    mgr.initialize(0.0)
    mgr.update(2.5)
    assert calls == [("QuantizationModifier", 0.0), ("QuantizationModifier", 2.5)]


def test_seed001_style_recipe_sparse_stage_on_yolov8n():
    from ultralytics.nn.tasks import DetectionModel

    recipe = load_recipe(os.path.join(RECIPES, "seed001_style_yolov8n_pruned_quantized.md"))
    sparse = recipe.split("sparse")
    assert not sparse.of_type("QuantizationModifier") and sparse.num_epochs() == 5
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", verbose=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mgr = RecipeManager(sparse, model, opt, steps_per_epoch=1)
    mgr.initialize(0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0032)  # SetLearningRateModifier at epoch 0
    mgr.update(3.0)
    _, per_layer = mgr.sparsity()
    assert per_layer["model.1.conv.weight"] == pytest.approx(0.6, abs=1e-3)
    assert per_layer["model.9.cv2.conv.weight"] == pytest.approx(0.85, abs=1e-3)
    assert "model.22.dfl.conv.weight" not in per_layer and len(per_layer) == 26
    assert opt.param_groups[0]["weight_decay"] == 0.0  # SetWeightDecayModifier at epoch 3
    mgr.update(4.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0032 * 0.985)  # StepLR one step after epoch 3
