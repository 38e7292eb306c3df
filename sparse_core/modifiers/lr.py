"""Learning-rate and weight-decay executors, with SparseML's formulas.

LearningRateFunctionModifier: ``x = (epoch - start) / (end - start)``; linear ``init + x * (final - init)``;
cosine ``0.5 * (1 + cos(pi * (x + shift))) * range + low`` (decaying when final < init, rising otherwise).
While any LR modifier is active (``active(epoch)``) the trainer's own scheduler must leave the LR alone.
"""

from __future__ import annotations

import math

import torch

from sparse_core.errors import NotSupportedYet, UserError
from sparse_core.modifiers.registry import register_executor

_EPS = 1e-9


def lr_function(lr_func: str, epoch: float, start: float, end: float, init_lr: float, final_lr: float) -> float:
    """LR of a LearningRateFunctionModifier at ``epoch`` (clamped to [start, end])."""
    x = min(max((epoch - start) / (end - start), 0.0), 1.0)
    if lr_func == "linear":
        return init_lr + x * (final_lr - init_lr)
    if lr_func == "cosine":
        if final_lr < init_lr:
            low, span, shift = final_lr, init_lr - final_lr, 0.0
        else:
            low, span, shift = init_lr, final_lr - init_lr, 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (x + shift))) * span + low
    raise ValueError(f"unknown lr_func {lr_func!r}")


def scheduler_lr(mod, epoch: float) -> float:
    """LR of a LearningRateModifier (PyTorch scheduler class stepped once per epoch from start_epoch)."""
    elapsed = max(epoch - max(mod.start_epoch, 0.0), 0.0)
    kw = mod.lr_kwargs
    if mod.lr_class == "StepLR":
        return mod.init_lr * kw.get("gamma", 0.1) ** math.floor(elapsed / kw["step_size"] + _EPS)
    if mod.lr_class == "MultiStepLR":
        passed = sum(1 for m in kw["milestones"] if epoch + _EPS >= m)
        return mod.init_lr * kw.get("gamma", 0.1) ** passed
    if mod.lr_class == "ExponentialLR":
        return mod.init_lr * kw["gamma"] ** math.floor(elapsed + _EPS)
    raise ValueError(mod.lr_class)


class LRExecutor:
    """Sets ``lr`` (or ``weight_decay``) of the selected optimizer param groups from one modifier."""

    def __init__(self, mod, where: str, optimizer: torch.optim.Optimizer | None):
        self.mod, self.where, self.optimizer = mod, where, optimizer
        self.applied = False  # for the set-once modifiers
        if mod.type_name == "LearningRateModifier" and mod.lr_class == "CosineAnnealingWarmRestarts":
            raise NotSupportedYet(f"{where}: lr_class: CosineAnnealingWarmRestarts is not supported yet; use "
                                  "LearningRateFunctionModifier with lr_func: cosine")
        groups = getattr(mod, "param_groups", None)
        if optimizer is not None and groups:
            bad = [g for g in groups if not 0 <= g < len(optimizer.param_groups)]
            if bad:
                raise UserError(f"{where}: param_groups: {bad} not in the optimizer, which has "
                                f"{len(optimizer.param_groups)} param groups (0..{len(optimizer.param_groups) - 1})")

    @property
    def start(self) -> float:
        return max(getattr(self.mod, "start_epoch", -1.0), 0.0)

    def active(self, epoch: float) -> bool:
        """True while this modifier owns the LR at ``epoch``."""
        m = self.mod
        if m.kind != "lr" or epoch + _EPS < self.start:
            return False
        if m.type_name == "SetLearningRateModifier":
            return True  # the LR it sets stays until another modifier changes it
        return m.end_epoch < 0 or epoch <= m.end_epoch + _EPS

    def value(self, epoch: float) -> float | None:
        m = self.mod
        if m.type_name == "LearningRateFunctionModifier":
            return lr_function(m.lr_func, epoch, m.start_epoch, m.end_epoch, m.init_lr, m.final_lr)
        if m.type_name == "LearningRateModifier":
            return scheduler_lr(m, min(epoch, m.end_epoch) if m.end_epoch >= 0 else epoch)
        if m.type_name == "SetLearningRateModifier":
            return m.learning_rate
        return m.weight_decay

    def update(self, epoch: float) -> bool:
        """Set the value due at ``epoch``; False (the LR never changes masks or the model)."""
        if self.optimizer is None or epoch + _EPS < self.start:
            return False
        set_once = self.mod.type_name in ("SetLearningRateModifier", "SetWeightDecayModifier")
        if set_once and self.applied:
            return False
        if not set_once and not self.active(epoch):
            return False
        value = self.value(epoch)
        if value is None:
            return False
        key = "weight_decay" if self.mod.kind == "wd" else "lr"
        groups = getattr(self.mod, "param_groups", None)
        for index, group in enumerate(self.optimizer.param_groups):
            if not groups or index in groups:
                group[key] = value
        self.applied = True
        return False

    def initialize(self, epoch: float) -> None:
        """Nothing to prepare: ``update`` sets the value due."""

    def finalize(self) -> None:
        """The optimizer keeps the last value set."""

    def state_dict(self) -> dict:
        return {"type": self.mod.type_name, "applied": self.applied}

    def load_state_dict(self, state: dict) -> None:
        self.applied = bool(state.get("applied", False))


def _lr_executor(mod, manager, where: str) -> LRExecutor:
    return LRExecutor(mod, where, manager.optimizer)


for _name in ("SetLearningRateModifier", "LearningRateFunctionModifier", "LearningRateModifier",
              "SetWeightDecayModifier"):
    register_executor(_name, _lr_executor)
