"""Coupled channel groups as the sensitivity analysis and the recipe generator see them.

A group (``sparse_core.structured.graph``) is the unit structured pruning applies one sparsity to. Here each gets a
stable id (its first producer conv), its producer convs (the ``params`` a recipe selects it by), and helpers to
remove a group's lowest-magnitude channels the way the structured executor ranks them (BatchNorm-folded filter L2
norm, kept counts from ``keep_count``) and to count the channels every conv keeps for a choice of group sparsities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparse_core.structured.executor import keep_count
from sparse_core.structured.graph import ChannelGraph, Group, trace


@dataclass
class GroupInfo:
    """One coupled group: ``gid`` (its first producer conv), producer convs, channel units, C2f segments."""

    gid: str
    convs: list[str]
    group: Group

    @property
    def units(self) -> int:
        return len(self.group.units)

    def kept_units(self, sparsity: float) -> int:
        return sum(keep_count(len(seg), sparsity) for seg in self.group.segments)


def model_groups(model: nn.Module) -> tuple[ChannelGraph, list[GroupInfo]]:
    """Trace ``model`` and name its prunable groups."""
    g = trace(model)
    out = []
    for group in g.groups():
        convs = [g.spaces[i].conv for i in group.spaces if g.spaces[i].conv]
        out.append(GroupInfo(convs[0], convs, group))
    return g, out


@torch.no_grad()
def unit_scores(model: nn.Module, g: ChannelGraph, info: GroupInfo) -> list[float]:
    """Mean BatchNorm-folded filter L2 norm per unit (the structured executor's ranking)."""
    slot = {}
    for i in info.group.spaces:
        sp = g.spaces[i]
        if not sp.conv:
            continue
        norm = model.get_submodule(sp.conv).weight.detach().float().flatten(1).norm(dim=1)
        if sp.bn is not None:
            bn = model.get_submodule(sp.bn)
            norm = norm * bn.weight.detach().float().abs() / (bn.running_var.float() + bn.eps).sqrt()
        for c in range(sp.size):
            slot[sp.start + c] = float(norm[c])
    return [sum(slot.get(s, 0.0) for s in unit) / len(unit) for unit in info.group.units]


@torch.no_grad()
def zero_group(model: nn.Module, g: ChannelGraph, info: GroupInfo, sparsity: float) -> int:
    """Zero the lowest-scoring units of one group in place (filter, bias, BN gamma/beta); returns units zeroed."""
    scores = unit_scores(model, g, info)
    gone = []
    for seg in info.group.segments:
        n = len(seg) - keep_count(len(seg), sparsity)
        gone += sorted(seg, key=lambda i: scores[i])[:n]
    for i in gone:
        for s in info.group.units[i]:
            sp = g.spaces[g.slot_space[s]]
            c = s - sp.start
            conv = model.get_submodule(sp.conv)
            conv.weight[c] = 0
            if conv.bias is not None:
                conv.bias[c] = 0
            if sp.bn is not None:
                bn = model.get_submodule(sp.bn)
                bn.weight[c] = 0
                bn.bias[c] = 0
    return len(gone)


def kept_units(segments: list[int], sparsity: float) -> int:
    """Units a group with these segment sizes keeps at ``sparsity`` (the executor's rounding)."""
    return sum(keep_count(n, sparsity) for n in segments)


def structure(g: ChannelGraph, groups: list[GroupInfo]) -> dict[str, dict[str, dict[str, int]]]:
    """Per conv: how many of its output / input channels belong to each group ("" = never pruned).

    Enough to compute any conv's kept width for any per-group sparsity without the model (analysis.json keeps it).
    """
    gid_of: dict[int, str] = {}
    for info in groups:
        for unit in info.group.units:
            for slot in unit:
                gid_of[slot] = info.gid
    out: dict[str, dict[str, dict[str, int]]] = {}
    for sp in g.spaces:
        if sp.conv:
            entry = out.setdefault(sp.conv, {"out": {}, "in": {}})
            for slot in range(sp.start, sp.start + sp.size):
                k = gid_of.get(slot, "")
                entry["out"][k] = entry["out"].get(k, 0) + 1
    for c in g.consumers.values():
        entry = out.setdefault(c.name, {"out": {}, "in": {}})
        for slot in c.slots:
            k = gid_of.get(slot, "")
            entry["in"][k] = entry["in"].get(k, 0) + 1
    return out


def widths(struct: dict, segments: dict[str, list[int]], sparsity: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Per conv: (kept output fraction, kept input fraction) under ``sparsity`` per group id."""
    frac = {gid: kept_units(seg, sparsity.get(gid, 0.0)) / sum(seg) for gid, seg in segments.items()}

    def kept(counts: dict[str, int]) -> float:
        total = sum(counts.values())
        return sum(n * frac.get(k, 1.0) for k, n in counts.items()) / total if total else 1.0

    return {conv: (kept(e["out"]), kept(e["in"])) for conv, e in struct.items()}
