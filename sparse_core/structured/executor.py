"""Structured GMP: ``GMPruningModifier`` with ``mask_type: filter`` prunes whole channels, coupled ones together.

Recipe semantics (SparseML's field names, YOLO-aware meaning):

- ``params`` selects the producer convs whose output channels may go (``__ALL_PRUNABLE__`` = every conv). A
  channel coupled to others (residual adds, C2f halves, concat consumers) goes only if every conv producing it is
  selected; the image input and the prediction convs of Detect/Segment are never pruned.
- ``final_sparsity`` is the fraction of channels removed from every coupled group (per group, not per weight),
  reached along ``inter_func`` from ``init_sparsity`` between ``start_epoch`` and ``end_epoch``, updated every
  ``update_frequency`` epochs. Kept counts are rounded up to a multiple of ``CHANNEL_MULTIPLE`` (SIMD-friendly
  widths) in groups of at least twice that size; a C2f's two chunk halves keep the same count. ``channel_multiple:
  M`` (our extension) makes every kept count a multiple of M and never below M (or the group's size if smaller).
- A channel's importance is the L2 norm of its BatchNorm-folded filter (mean over the slots of a coupled unit);
  pruned channels score lowest, so they stay pruned while sparsity rises.

Masks zero the filter, its bias and the BatchNorm gamma/beta of each pruned channel, so its output is exactly 0
(act(0) = 0) and the model computes what the thinned model will. At the end of training the integration removes
those channels physically (``sparse_core.structured.thin``): a smaller dense model for every runtime.
"""

from __future__ import annotations

import math

import torch

from sparse_core.errors import NotSupportedYet, UserError
from sparse_core.modifiers.pruning import GMPSchedule, interpolate
from sparse_core.modifiers.selectors import resolve_params
from sparse_core.recipe.schemas import FROM_PARAM_TOKEN
from sparse_core.structured.graph import ChannelGraph, Group, trace

CHANNEL_MULTIPLE = 8


def keep_count(n: int, sparsity: float, multiple: int | None = None) -> int:
    """Channels kept of ``n`` at ``sparsity``. Default: rounded up to ``CHANNEL_MULTIPLE`` when n >= 2 * that, at
    least 1. With ``multiple``: rounded up to it and never below it (at most n)."""
    keep = n - int(round(sparsity * n))
    if multiple is not None:
        return min(n, max(multiple, math.ceil(keep / multiple) * multiple))
    if n >= 2 * CHANNEL_MULTIPLE:
        keep = min(n, math.ceil(keep / CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE)
    return max(keep, 1)


class StructuredGMPExecutor(GMPSchedule):
    """Gradual magnitude pruning of coupled channel groups of an Ultralytics model (see module docstring)."""

    def __init__(self, mod, where: str, model: torch.nn.Module, params: dict[str, torch.nn.Parameter]):
        if mod.uses_global_sparsity():
            raise NotSupportedYet(f"{where}: mask_type: filter with global_sparsity is not supported yet; channels "
                                  "are ranked within each coupled group (set global_sparsity: False)")
        final: dict[str, float] = {}
        for selector, sparsity in mod.selector_sparsities():
            for name in resolve_params(selector, model, where):
                final.setdefault(name, sparsity)
        try:
            self.graph: ChannelGraph = trace(model)
        except TypeError as err:
            raise UserError(f"{where}: mask_type: filter: {err}") from None
        self.plan: list[tuple[Group, float]] = []  # (group, final sparsity) for groups with selected units
        for group in self.graph.groups():
            group, sparsity = self._selected(group, final)
            if group is not None:
                self.plan.append((group, sparsity))
        if not self.plan:
            raise UserError(f"{where}: mask_type: filter: params select no prunable channel (only model inputs/"
                            "outputs or unsupported layers); select the convs inside the network, "
                            "e.g. __ALL_PRUNABLE__")
        names: list[str] = []
        for sp in self._spaces():
            names.append(f"{sp.conv}.weight")
            if f"{sp.conv}.bias" in params:
                names.append(f"{sp.conv}.bias")
            if sp.bn is not None:
                names += [f"{sp.bn}.weight", f"{sp.bn}.bias"]
        order = {n: i for i, n in enumerate(params)}
        super().__init__(mod, where, sorted(set(names), key=order.__getitem__), params)
        self._bns = {sp.bn: model.get_submodule(sp.bn) for sp in self._spaces() if sp.bn is not None}
        self.pruned: list[set[int]] = [set() for _ in self.plan]  # unit indices per plan entry

    # -- plan -----------------------------------------------------------------------------------------------------
    def _selected(self, group: Group, final: dict[str, float]) -> tuple[Group | None, float]:
        """The group restricted to units whose every producer conv is selected, and its sparsity."""
        sp_of = self.graph.slot_space
        ok = [all(f"{self.graph.spaces[sp_of[s]].conv}.weight" in final for s in unit) for unit in group.units]
        if not any(ok) or (group.split is not None and not all(ok)):
            return None, 0.0
        sparsity = min(final[f"{self.graph.spaces[i].conv}.weight"] for i in group.spaces
                       if f"{self.graph.spaces[i].conv}.weight" in final)
        if all(ok):
            return group, sparsity
        keep = [i for i, good in enumerate(ok) if good]
        remap = {old: new for new, old in enumerate(keep)}
        return Group(group.spaces, [group.units[i] for i in keep], [[remap[i] for i in keep]], None), sparsity

    def _spaces(self):
        if getattr(self, "_space_list", None) is not None:
            return self._space_list
        seen = {}
        for group, _ in self.plan:
            for unit in group.units:
                for s in unit:
                    sp = self.graph.spaces[self.graph.slot_space[s]]
                    seen[sp.conv] = sp
        self._space_list = list(seen.values())
        return self._space_list

    @torch.no_grad()
    def _slot_scores(self) -> list[float]:
        """BatchNorm-folded filter L2 norm of every producer channel, indexed by slot (0 where not computed)."""
        out = [0.0] * len(self.graph.slot_space)
        for sp in self._spaces():
            norm = self.params[f"{sp.conv}.weight"].detach().float().flatten(1).norm(dim=1)
            if sp.bn is not None:
                bn = self._bns[sp.bn]
                norm = norm * bn.weight.detach().float().abs() / (bn.running_var.float() + bn.eps).sqrt()
            out[sp.start : sp.start + sp.size] = norm.tolist()
        return out

    def _scores(self, group: Group, pruned: set[int], slot_scores: list[float]) -> list[float]:
        """Mean slot score per unit; already pruned units score -1 (they stay pruned)."""
        return [-1.0 if i in pruned else sum(slot_scores[s] for s in unit) / len(unit)
                for i, unit in enumerate(group.units)]

    # -- schedule (GMPSchedule's timetable; ``init`` by plan entry) ------------------------------------------------
    def _init_sparsities(self) -> None:
        if self.init:
            return
        for k, (group, _) in enumerate(self.plan):
            if self.mod.init_sparsity == FROM_PARAM_TOKEN:
                zero = self._zero_units(group)
                self.init[k] = len(zero) / len(group.units)
            else:
                self.init[k] = float(self.mod.init_sparsity)

    def _zero_units(self, group: Group) -> set[int]:
        out = set()
        for i, unit in enumerate(group.units):
            if all(self._slot_is_zero(s) for s in unit):
                out.add(i)
        return out

    def _slot_is_zero(self, s: int) -> bool:
        sp = self.graph.spaces[self.graph.slot_space[s]]
        c = s - sp.start
        if sp.bn is not None:
            return float(self.params[f"{sp.bn}.weight"][c]) == 0 and float(self.params[f"{sp.bn}.bias"][c]) == 0
        return bool((self.params[f"{sp.conv}.weight"][c] == 0).all())

    def _prune(self, epoch: float, final_step: bool) -> None:
        m = self.mod
        slot_scores = self._slot_scores()
        for k, (group, final) in enumerate(self.plan):
            target = final if final_step else interpolate(epoch, m.start_epoch, m.end_epoch, self.init[k], final,
                                                          m.inter_func)
            scores = self._scores(group, self.pruned[k], slot_scores)
            pruned: set[int] = set()
            for seg in group.segments:
                n_prune = len(seg) - keep_count(len(seg), target, m.channel_multiple)
                pruned.update(sorted(seg, key=lambda i: scores[i])[:n_prune])
            self.pruned[k] = pruned
        self.masks = self._build_masks()

    def _build_masks(self) -> dict[str, torch.Tensor]:
        keep = {sp.conv: [True] * sp.size for sp in self._spaces()}
        for (group, _), pruned in zip(self.plan, self.pruned):
            for i in pruned:
                for s in group.units[i]:
                    sp = self.graph.spaces[self.graph.slot_space[s]]
                    keep[sp.conv][s - sp.start] = False
        masks = {}
        for sp in self._spaces():
            rows = torch.tensor(keep[sp.conv], dtype=torch.bool)
            for name in (f"{sp.conv}.weight", f"{sp.conv}.bias", f"{sp.bn}.weight", f"{sp.bn}.bias"):
                if name in self.names:
                    p = self.params[name]
                    masks[name] = rows.to(p.device).view(-1, *[1] * (p.ndim - 1)).expand_as(p).clone()
        return masks

    def sparsity_report(self) -> list[dict]:
        """Per coupled group: its producer convs, channel units, and how many are pruned now."""
        return [{"convs": [self.graph.spaces[i].conv for i in group.spaces], "units": len(group.units),
                 "pruned": len(pruned), "final_sparsity": final}
                for (group, final), pruned in zip(self.plan, self.pruned)]

    # -- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "pruned": [sorted(p) for p in self.pruned]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.init = {int(k): v for k, v in self.init.items()}
        pruned = state.get("pruned", [])
        if len(pruned) != len(self.plan):
            raise UserError(f"{self.where}: saved structured pruning state has {len(pruned)} channel groups; the model "
                            f"and recipe now give {len(self.plan)}")
        self.pruned = [set(p) for p in pruned]
