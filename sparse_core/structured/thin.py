"""Physical thinning: remove channels whose output is identically zero, leaving a smaller dense model.

A channel is removable when its producer makes exactly 0 for every input (BatchNorm gamma = beta = 0, or a zero
filter and bias without BatchNorm) and every slot of its unit (see ``graph``) is like that: what the structured
pruning masks leave behind. Its consumers then add nothing from it, so slicing it out of the producer (filter,
BatchNorm entries) and of every consumer (input channels) changes outputs only by float rounding; ``thin_model``
measures that on a probe and refuses a result that differs. C2f chunk halves are kept equal and ``C2f.c`` updated,
so the thinned model is made of stock Ultralytics modules and pickles, loads, fuses, validates and exports as usual.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from sparse_core.structured.graph import ChannelGraph, Group, trace

THINNED_ATTR = "sparsepipe_thinned"  # set on a thinned model: its yaml no longer describes its widths
PARITY_RTOL = 1e-4


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def zero_slots(model: nn.Module, g: ChannelGraph) -> set[int]:
    """Slots whose producer outputs exactly 0 whatever the input."""
    out = set()
    for sp in g.spaces:
        if not sp.conv:
            continue
        conv = _module(model, sp.conv)
        w = conv.weight.detach().flatten(1)
        if sp.bn is not None:
            bn = _module(model, sp.bn)
            zero = (bn.weight.detach() == 0) & (bn.bias.detach() == 0)
        else:
            zero = (w == 0).all(1)
            if conv.bias is not None:
                zero &= conv.bias.detach() == 0
        out.update(sp.start + int(i) for i in torch.nonzero(zero).flatten())
    return out


def removable_units(model: nn.Module, g: ChannelGraph, groups: list[Group] | None = None) -> list[list[int]]:
    """Units (slot lists) that are zero in every slot; C2f halves lose equally many, and no segment is emptied."""
    zero = zero_slots(model, g)
    remove = []
    for group in groups if groups is not None else g.groups():
        per_segment = [[group.units[i] for i in seg if all(s in zero for s in group.units[i])]
                       for seg in group.segments]
        if group.split is not None:
            k = min(len(z) for z in per_segment)
            per_segment = [z[:k] for z in per_segment]
        for seg, z in zip(group.segments, per_segment):
            remove.extend(z[: len(seg) - 1] if len(z) >= len(seg) else z)
    return remove


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.contiguous().clone(), requires_grad=like.requires_grad)


@torch.no_grad()
def apply_removal(model: nn.Module, g: ChannelGraph, remove: list[list[int]]) -> int:
    """Slice the removed slots out of producers and consumers (in place); returns how many channels went."""
    gone = {s for unit in remove for s in unit}
    if not gone:
        return 0
    for sp in g.spaces:
        keep = [i for i in range(sp.size) if sp.start + i not in gone]
        if not sp.conv or len(keep) == sp.size:
            continue
        idx = torch.tensor(keep, dtype=torch.long)
        conv = _module(model, sp.conv)
        conv.weight = _param(conv.weight.data.index_select(0, idx), conv.weight)
        if conv.bias is not None:
            conv.bias = _param(conv.bias.data.index_select(0, idx), conv.bias)
        conv.out_channels = len(keep)
        if sp.bn is not None:
            bn = _module(model, sp.bn)
            bn.weight = _param(bn.weight.data.index_select(0, idx), bn.weight)
            bn.bias = _param(bn.bias.data.index_select(0, idx), bn.bias)
            bn.running_mean = bn.running_mean.index_select(0, idx).clone()
            bn.running_var = bn.running_var.index_select(0, idx).clone()
            bn.num_features = len(keep)
    for c in g.consumers.values():
        keep = [i for i, s in enumerate(c.slots) if s not in gone]
        if len(keep) == len(c.slots):
            continue
        idx = torch.tensor(keep, dtype=torch.long)
        conv = _module(model, c.name)
        conv.weight = _param(conv.weight.data.index_select(0 if c.transposed else 1, idx), conv.weight)
        conv.in_channels = len(keep)
    for name, first, second in g.splits:
        k0, k1 = sum(s not in gone for s in first), sum(s not in gone for s in second)
        if k0 != k1:
            raise RuntimeError(f"thinning {name}: C2f halves would differ ({k0} vs {k1} channels)")
        _module(model, name).c = k0
    return len(gone)


def conv_macs(model: nn.Module, imgsz: int = 640) -> int:
    """Multiply-accumulates of all Conv2d/ConvTranspose2d layers for one ``imgsz`` image (what thinning cuts)."""
    total = 0

    def hook(m, inputs, output):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        if isinstance(m, nn.ConvTranspose2d):
            total += inputs[0][0].numel() * (m.out_channels // m.groups) * k
        else:
            total += output[0].numel() * (m.in_channels // m.groups) * k

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters())
            channels = model.yaml.get("channels", 3) if isinstance(getattr(model, "yaml", None), dict) else 3
            model(torch.zeros(1, channels, imgsz, imgsz, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total)


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    y = model(x)
    if isinstance(y, tuple) and len(y) == 2 and isinstance(y[1], dict):
        y = y[0]  # eval mode: (predictions, raw head dict holding the feature maps thinning changes)
    flat, stack = [], [y]
    while stack:
        item = stack.pop()
        if torch.is_tensor(item):
            flat.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return flat


def conv_params(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))


@torch.no_grad()
def thin_model(model: nn.Module, imgsz: int = 64, check: bool = True) -> dict[str, Any]:
    """Remove every removable channel of ``model`` in place; returns a report (counts, MACs, parity).

    Works on FP32 or FP16 models (the trace and the parity probe run on an FP32 copy). With ``check`` the thinned
    model's outputs are compared with the original's on a seeded probe and a difference beyond float rounding
    raises (it would mean a coupling the tracer got wrong).
    """
    ref = copy.deepcopy(model).float().eval()
    g = trace(ref, imgsz)
    remove = removable_units(ref, g)
    report = {
        "channels_removed": 0, "units_removed": len(remove), "conv_params_before": conv_params(ref),
        "conv_macs_before": conv_macs(ref, imgsz), "imgsz": imgsz, "barriers": list(g.barriers),
    }
    report["channels_removed"] = apply_removal(model, g, remove)
    thin = copy.deepcopy(model).float().eval()
    report["conv_params_after"] = conv_params(thin)
    report["conv_macs_after"] = conv_macs(thin, imgsz)
    report["macs_ratio"] = round(report["conv_macs_after"] / max(report["conv_macs_before"], 1), 6)
    if check and remove:
        channels = ref.yaml.get("channels", 3) if isinstance(getattr(ref, "yaml", None), dict) else 3
        probe = torch.rand(2, channels, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
        a, b = _outputs(ref, probe), _outputs(thin, probe)
        if [t.shape for t in a] != [t.shape for t in b]:
            raise RuntimeError(f"thinning changed output shapes: {[t.shape for t in a]} -> {[t.shape for t in b]}")
        diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
        scale = max(float(x.abs().max()) for x in a)
        report["parity_max_abs_diff"] = diff
        if diff > PARITY_RTOL * max(scale, 1.0):
            raise RuntimeError(f"thinning changed outputs by {diff:.3g} (scale {scale:.3g}); a coupling was missed")
    if remove:
        setattr(model, THINNED_ATTR, True)
    return report
