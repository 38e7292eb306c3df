"""Pruning executors: gradual magnitude pruning (GMP) and constant pruning, holding bool masks per parameter.

GMP follows SparseML: at each update epoch the target sparsity is
``interpolate(epoch, start, end, init, final, inter_func)`` with progress ``x = (epoch - start) / (end - start)``
mapped by linear ``x``, cubic ``1 - (1 - x)**3`` or inverse_cubic ``1 - (1 - x)**(1/3)``. Updates happen at
start_epoch, every update_frequency epochs after it, and at end_epoch (final sparsity). Magnitudes of weights
already pruned count as 0, so pruned weights stay pruned while sparsity rises.
"""

from __future__ import annotations

import math
import sys

import torch

from sparse_core.errors import NotSupportedYet, UserError
from sparse_core.modifiers.registry import register_executor
from sparse_core.modifiers.selectors import resolve_params
from sparse_core.recipe.schemas import FROM_PARAM_TOKEN, ConstantPruningModifier, GMPruningModifier

_EPS = 1e-9


def interpolate(epoch: float, start: float, end: float, y0: float, y1: float, inter_func: str) -> float:
    """SparseML's interpolation between (start, y0) and (end, y1), clamped outside [start, end]."""
    if end <= start:
        return y1 if epoch >= start else y0
    x = min(max((epoch - start) / (end - start), 0.0), 1.0)
    if inter_func == "linear":
        y = x
    elif inter_func == "cubic":
        y = 1 - (1 - x) ** 3
    elif inter_func == "inverse_cubic":
        y = 1 - (1 - x) ** (1 / 3)
    else:
        raise ValueError(f"unknown inter_func {inter_func!r}")
    if y <= sys.float_info.epsilon:
        return y0
    if y >= 1.0 - sys.float_info.epsilon:
        return y1
    return y0 + y * (y1 - y0)


def gmp_update_due(mod, ended: bool, next_update: int, epoch: float) -> bool:
    """GMP's schedule: an update is due at start_epoch, every update_frequency epochs after it, and at end_epoch."""
    if ended or epoch + _EPS < mod.start_epoch:
        return False
    if epoch + _EPS >= mod.end_epoch:
        return True
    return epoch + _EPS >= mod.start_epoch + next_update * mod.update_frequency


def magnitude_mask(weight: torch.Tensor, mask: torch.Tensor | None, sparsity: float) -> torch.Tensor:
    """Bool mask keeping the largest |w| so that exactly round(sparsity * numel) entries are pruned."""
    scores = weight.detach().abs().flatten().float()
    if mask is not None:
        scores = scores * mask.flatten()
    n_prune = int(round(sparsity * scores.numel()))
    new = torch.ones_like(scores, dtype=torch.bool)
    if n_prune > 0:
        new[torch.topk(scores, n_prune, largest=False, sorted=False).indices] = False
    return new.view_as(weight)


def global_magnitude_masks(weights: list[torch.Tensor], masks: list[torch.Tensor | None],
                           sparsity: float) -> list[torch.Tensor]:
    """Masks pruning the smallest |w| across all ``weights`` together to ``sparsity`` overall."""
    scores = []
    for w, m in zip(weights, masks):
        s = w.detach().abs().flatten().float()
        scores.append(s * m.flatten() if m is not None else s)
    flat = torch.cat(scores)
    n_prune = int(round(sparsity * flat.numel()))
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_prune > 0:
        keep[torch.topk(flat, n_prune, largest=False, sorted=False).indices] = False
    out, offset = [], 0
    for w in weights:
        out.append(keep[offset : offset + w.numel()].view_as(w))
        offset += w.numel()
    return out


def _check_mask_type(mod, where: str) -> None:
    mask_type = getattr(mod, "mask_type", "unstructured")
    if mask_type == "unstructured" or mask_type == [1, 1]:
        return
    raise NotSupportedYet(f"{where}: mask_type: {mask_type!r} is not supported yet; "
                          "use mask_type: unstructured, or filter (whole channels, removed after training)")


class PruningExecutor:
    """Masks of one pruning modifier over ``names``; ``masks`` is None until the modifier starts."""

    def __init__(self, mod, where: str, names: list[str], params: dict[str, torch.nn.Parameter]):
        self.mod, self.where, self.names = mod, where, names
        self.params = params
        self.masks: dict[str, torch.Tensor] | None = None
        self.enabled = False  # masks applied to weights

    # the ModifierExecutor protocol (sparse_core.modifiers.registry); masks are applied by the manager
    def initialize(self, epoch: float) -> None:
        """Nothing to prepare: the manager's first ``update`` computes the masks due at ``epoch``."""

    def finalize(self) -> None:
        """Nothing to undo: masked weights stay zero."""

    # schedule state that load_state_dict restores
    def state_dict(self) -> dict:
        return {"type": self.mod.type_name, "names": list(self.names), "masks": self.masks, "enabled": self.enabled}

    def load_state_dict(self, state: dict) -> None:
        if state.get("type") != self.mod.type_name or list(state.get("names", [])) != self.names:
            raise UserError(f"{self.where}: saved pruning state is for {state.get('type')} over "
                            f"{len(state.get('names', []))} params; the recipe now selects {len(self.names)} params")
        masks = state.get("masks")
        self.masks = None if masks is None else {n: masks[n].to(dtype=torch.bool, device=self.params[n].device)
                                                  for n in self.names}
        self.enabled = bool(state.get("enabled"))


class ConstantPruningExecutor(PruningExecutor):
    """Masks = the nonzeros of each selected weight at start_epoch; kept until end_epoch (-1: for good)."""

    mod: ConstantPruningModifier

    def update(self, epoch: float) -> bool:
        start = max(self.mod.start_epoch, 0.0)
        end = self.mod.end_epoch
        if self.masks is None and epoch + _EPS >= start:
            self.masks = {n: self.params[n].detach() != 0 for n in self.names}
            self.enabled = True
            return True
        if self.enabled and end >= 0 and epoch + _EPS >= end:
            self.enabled = False
            return True
        return False

    def state_dict(self) -> dict:
        return super().state_dict()


class GMPSchedule(PruningExecutor):
    """When a GMP modifier updates its masks, shared by unstructured and structured GMP: at start_epoch, every
    update_frequency epochs after it and at end_epoch (then off unless leave_enabled); ``init`` sparsities are
    taken at the first update. Subclasses define ``_init_sparsities()`` and ``_prune(epoch, final_step)``, which
    sets ``masks``."""

    mod: GMPruningModifier

    def __init__(self, mod, where, names, params):
        super().__init__(mod, where, names, params)
        self.init: dict = {}
        self.next_update = 0  # index k of the next scheduled update at start + k * update_frequency
        self.ended = False

    def due(self, epoch: float) -> bool:
        return gmp_update_due(self.mod, self.ended, self.next_update, epoch)

    def update(self, epoch: float) -> bool:
        """At a due epoch: new masks (``_prune``), then the next update or, at end_epoch, the end."""
        if not self.due(epoch):
            return False
        self._init_sparsities()
        m = self.mod
        final_step = epoch + _EPS >= m.end_epoch
        self._prune(epoch, final_step)
        self.enabled = True
        if final_step:
            self.ended = True
            self.enabled = bool(m.leave_enabled)
        elif m.update_frequency > 0:
            self.next_update = math.floor((epoch + _EPS - m.start_epoch) / m.update_frequency) + 1
        return True

    def state_dict(self) -> dict:
        return {**super().state_dict(), "init": dict(self.init), "next_update": self.next_update, "ended": self.ended}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.init = dict(state.get("init", {}))
        self.next_update = int(state.get("next_update", 0))
        self.ended = bool(state.get("ended", False))


class GMPExecutor(GMPSchedule):
    """Gradual magnitude pruning of one GMPruningModifier (per-layer or global ranking)."""

    def __init__(self, mod, where, names, params, final: dict[str, float]):
        super().__init__(mod, where, names, params)
        _check_mask_type(mod, where)
        self.final = final  # name -> final sparsity
        self.applied: dict[str, float] = {}  # name -> last target sparsity
        if mod.uses_global_sparsity() and len(set(final.values())) > 1:
            raise UserError(f"{where}: global_sparsity needs one final_sparsity for all params; got several")

    def _init_sparsities(self) -> None:
        if self.init:
            return
        if self.mod.init_sparsity == FROM_PARAM_TOKEN:
            self.init = {n: float((self.params[n] == 0).float().mean()) for n in self.names}
        else:
            self.init = {n: float(self.mod.init_sparsity) for n in self.names}

    def target(self, name: str, epoch: float) -> float:
        """Sparsity the schedule asks of ``name`` at ``epoch``."""
        m = self.mod
        return interpolate(epoch, m.start_epoch, m.end_epoch, self.init[name], self.final[name], m.inter_func)

    def _prune(self, epoch: float, final_step: bool) -> None:
        targets = {n: (self.final[n] if final_step else self.target(n, epoch)) for n in self.names}
        old = self.masks or {}
        if self.mod.uses_global_sparsity():
            weights = [self.params[n] for n in self.names]
            new = global_magnitude_masks(weights, [old.get(n) for n in self.names], next(iter(targets.values())))
            self.masks = dict(zip(self.names, new))
        else:
            self.masks = {n: magnitude_mask(self.params[n], old.get(n), targets[n]) for n in self.names}
        self.applied = targets

    def state_dict(self) -> dict:
        return {**super().state_dict(), "applied": dict(self.applied)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.applied = dict(state.get("applied", {}))


def _gmp_executor(mod: GMPruningModifier, manager, where: str) -> GMPExecutor:
    final: dict[str, float] = {}
    for selector, sparsity in mod.selector_sparsities():
        for name in resolve_params(selector, manager.model, where):
            final.setdefault(name, sparsity)
    names = [n for n in manager.params if n in final]
    return GMPExecutor(mod, where, names, manager.params, final)


def _constant_executor(mod: ConstantPruningModifier, manager, where: str) -> ConstantPruningExecutor:
    return ConstantPruningExecutor(mod, where, resolve_params(mod.params, manager.model, where), manager.params)


for _name in ("GMPruningModifier", "MagnitudePruningModifier", "GlobalMagnitudePruningModifier"):
    register_executor(_name, _gmp_executor)
register_executor("ConstantPruningModifier", _constant_executor)
