"""Turn a float YOLO model into a QAT model for one QuantizationModifier, in place, deterministically by name.

``prepare(model, mod, where)`` restructures (per-instance activations, residual add inputs, Conv+BN fused into
``ConvBn2d``), resolves the schemes (``scheme.resolve``) and inserts fake quantization. Every Parameter object is
kept (fusion and torch.ao's QAT convs reuse them), so the optimizer, its momentum and the pruning masks stay valid;
``check_same_parameters`` proves it. Running ``prepare`` on a copy (the trainer's EMA) gives the same structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sparse_core.quantization import modules as qm
from sparse_core.quantization.scheme import ModuleScheme, Resolution, resolve
from sparse_core.recipe.schemas import QuantizationModifier


@dataclass
class Report:
    """What prepare did: counts for logs/tests and the per-module schemes it applied."""

    fused: int = 0
    schemes: dict[str, ModuleScheme] = field(default_factory=dict)
    inserted: dict[str, int] = field(default_factory=dict)
    unmatched: dict[str, list[str]] = field(default_factory=dict)
    generation: str = "scheme"

    def counts(self) -> dict[str, int]:
        return {"fused_conv_bn": self.fused, **self.inserted}


def _ultralytics_blocks():
    from ultralytics.nn.modules.block import Bottleneck
    from ultralytics.nn.modules.conv import Conv, DWConv

    return (Conv, DWConv), Bottleneck


def _in_scope(name: str, scope: list[str] | None) -> bool:
    return scope is None or any(name == s or name.startswith(s + ".") for s in scope)


def restructure(model: nn.Module, scope: list[str] | None = None) -> int:
    """Swap Ultralytics Conv/DWConv (with BN) and Bottleneck blocks for their QAT forms; returns Conv+BN fusions."""
    convs, bottleneck = _ultralytics_blocks()
    swaps = []
    for name, m in model.named_modules():
        if not name or not _in_scope(name, scope):
            continue
        if type(m) in convs and isinstance(getattr(m, "bn", None), nn.BatchNorm2d):
            swaps.append((name, "conv"))
        elif type(m) is bottleneck:
            swaps.append((name, "bottleneck"))
    fused = 0
    # deepest first, so a Bottleneck is rebuilt around its already converted cv1/cv2
    for name, kind in sorted(swaps, key=lambda s: -s[0].count(".")):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        block = getattr(parent, attr)
        if kind == "conv":
            new = qm.Conv(block)
            fused += 1
        else:
            new = qm.Bottleneck(block)
        new.train(block.training)
        setattr(parent, attr, new)
    return fused


def _apply(model: nn.Module, schemes: dict[str, ModuleScheme]) -> dict[str, int]:
    """Insert the fake quantization; returns how many input / weight / output fake-quant modules were added."""
    n = {"input_quant": 0, "weight_quant": 0, "output_quant": 0}
    for name, scheme in schemes.items():
        module = model.get_submodule(name)
        if scheme.weights is not None:
            if isinstance(module, qm.ConvBn2d):
                module.set_weight_quant(scheme.weights)
                n["weight_quant"] += 1
            elif type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear):
                parent_name, _, attr = name.rpartition(".")
                module = qm.qat_conv(module, scheme.weights)
                setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)
                n["weight_quant"] += 1
        if scheme.input is not None:
            qm.add_input_quant(module, scheme.input)
            n["input_quant"] += 1
        if scheme.output is not None:
            qm.add_output_quant(module, scheme.output)
            n["output_quant"] += 1
    return n


def prepare(model: nn.Module, mod: QuantizationModifier, where: str) -> Report:
    """Make ``model`` a QAT model for ``mod`` (in place); see the module docstring."""
    scope = list(mod.submodules) if mod.submodules else None
    fused = restructure(model, scope)
    res: Resolution = resolve(model, mod, where)
    inserted = _apply(model, res.schemes)
    return Report(fused, res.schemes, inserted, res.unmatched, res.generation)


def check_same_parameters(before: list[torch.nn.Parameter], model: nn.Module) -> None:
    """QAT preparation must keep every Parameter object (the optimizer and masks hold them)."""
    now = {id(p) for p in model.parameters()}
    old = {id(p) for p in before}
    if now != old:
        raise RuntimeError(f"QAT preparation changed the parameter set ({len(old - now)} dropped, {len(now - old)} "
                           "new); the optimizer would no longer train the model")


@torch.no_grad()
def sync_quant_state(src: nn.Module, dst: nn.Module, observe: bool = False) -> int:
    """Copy every fake-quant module's state (scale, zero point, observer ranges, enable flags) from ``src`` to the
    same-named module of ``dst`` — the EMA copy: its weights are averaged, its quantization grid is the live one's.
    With ``observe=False`` the copies' observers stay off (evaluation must not move the grid). Returns modules."""
    targets = qm.fake_quant_modules(dst)
    n = 0
    for name, fq in qm.fake_quant_modules(src).items():
        other = targets.get(name)
        if other is None:
            raise RuntimeError(f"sync_quant_state: {name} exists in the model but not in its copy")
        mine, theirs = dict(fq.named_buffers()), dict(other.named_buffers())
        for key, value in mine.items():
            target = theirs[key]
            if target.shape != value.shape:
                target.resize_(value.shape)
            target.copy_(value)
        if not observe:
            other.disable_observer()
        n += 1
    return n


def disable_observers(model: nn.Module) -> int:
    fqs = qm.fake_quant_modules(model).values()
    for fq in fqs:
        fq.disable_observer()
    return len(fqs)
