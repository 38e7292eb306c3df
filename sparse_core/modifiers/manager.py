"""RecipeManager: runs a resolved recipe's modifiers on a torch model + optimizer.

Lifecycle: ``initialize(epoch)`` (resolve selectors, build executors, hook the optimizer) → ``update(epoch)`` every
step with the fractional epoch → ``finalize()`` (unhook; weights stay zeroed; the model is plain again).

Masks survive training because the optimizer is hooked on both sides of ``step()``: before it, masked gradients
are zeroed (so momentum / Adam moments of pruned weights stay 0); after it, masked weights are zeroed again (so
weight decay or leftover momentum cannot revive them). Every modifier runs through the executor registered for it
(``sparse_core.modifiers.registry``); a modifier without one raises NotSupportedYet, never a silent no-op.
"""

from __future__ import annotations

from typing import Any

import torch

from sparse_core.errors import NotSupportedYet, UserError
from sparse_core.modifiers.lr import LRExecutor
from sparse_core.modifiers.pruning import PruningExecutor
from sparse_core.modifiers.registry import ModifierExecutor, executor_for
from sparse_core.modifiers.selectors import prunable_names
from sparse_core.recipe.recipe import Recipe
from sparse_core.recipe.schemas import Modifier
from sparse_core.sparsity import zero_fractions


class RecipeManager:
    """Applies ``recipe`` to ``model`` (and ``optimizer`` for LR / weight decay and mask hooks)."""

    def __init__(self, recipe: Recipe, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 steps_per_epoch: int = 1):
        self.recipe, self.model, self.optimizer = recipe, model, optimizer
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.epoch: float = 0.0
        self.pruners: list[PruningExecutor] = []
        self.lrs: list[LRExecutor] = []
        self.handlers: list[tuple[Modifier, ModifierExecutor]] = []  # executors other than pruning and LR
        self.params: dict[str, torch.nn.Parameter] = {}  # the model's parameters by name, for executor factories
        self.initialized = False
        self._hooks: list[Any] = []
        self._masked: list[tuple[str, torch.nn.Parameter, torch.Tensor]] = []  # (name, param, float mask)
        self._foreach: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._pending = False

    def _where(self, mod: Modifier) -> str:
        return f"{self.recipe.path or '<recipe>'}:{mod.line}: {mod.type_name}"

    # ------------------------------------------------------------------------------------------------ lifecycle

    def initialize(self, epoch: float = 0.0) -> None:
        """Resolve selectors, create executors and masks due at ``epoch``, hook the optimizer."""
        if self.initialized:
            raise RuntimeError("RecipeManager.initialize called twice")
        self.params = dict(self.model.named_parameters())
        for mod in self.recipe.modifiers:
            if mod.kind == "epoch":
                continue  # the trainer reads the epoch range from the recipe
            where = self._where(mod)
            factory = executor_for(mod)
            if factory is None:
                raise NotSupportedYet(f"{where}: {mod.type_name} ({mod.kind}) cannot be applied yet in this build; "
                                      "it is parsed and validated only")
            executor = factory(mod, self, where)
            if isinstance(executor, PruningExecutor):
                self.pruners.append(executor)
            elif isinstance(executor, LRExecutor):
                self.lrs.append(executor)
            else:
                self.handlers.append((mod, executor))
        if self.optimizer is not None:
            self._hooks.append(self.optimizer.register_step_pre_hook(lambda opt, a, k: self._before_step()))
            self._hooks.append(self.optimizer.register_step_post_hook(lambda opt, a, k: self._mask_weights()))
        self.initialized = True
        for executor in self._executors():
            executor.initialize(epoch)
        # Masks due at ``epoch`` are computed now but only written into the weights at the next update / step /
        # apply_masks: a resume calls load_state_dict right after initialize, and must find the weights untouched.
        self._pending = self._advance(epoch)

    def _executors(self) -> list[ModifierExecutor]:
        """Every executor: pruning, LR / weight decay, then the others (quantization, distillation)."""
        return [*self.pruners, *self.lrs, *(h for _, h in self.handlers)]

    def update(self, epoch: float) -> bool:
        """Advance to ``epoch`` (fractional): update masks when due, set LR / weight decay; True if masks changed."""
        if not self.initialized:
            raise RuntimeError("RecipeManager.update before initialize")
        changed = self._advance(epoch) or self._pending
        if changed:
            self._pending = False
            self._rebuild_masks()
            self._mask_weights()
            self._mask_optimizer_state()
        return changed

    def _flush(self) -> None:
        """Write masks computed by initialize into the weights (once)."""
        if self._pending:
            self._pending = False
            self._rebuild_masks()
            self._mask_weights()
            self._mask_optimizer_state()

    def _advance(self, epoch: float) -> bool:
        self.epoch = float(epoch)
        changed = False
        for executor in self._executors():
            changed |= bool(executor.update(self.epoch))
        return changed

    def lr_active(self, epoch: float) -> bool:
        """True when a recipe LR modifier controls the LR at ``epoch`` (the trainer's scheduler must not)."""
        return any(lr.active(epoch) for lr in self.lrs)

    def finalize(self) -> None:
        """Remove hooks and masks; masked weights stay zero and the model is an ordinary module."""
        self._flush()
        self._mask_weights()
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for executor in self._executors():
            executor.finalize()
        self._masked = []
        self._foreach = ([], [])
        self.initialized = False

    # ------------------------------------------------------------------------------------------------ masks

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Active bool masks by parameter name (AND of every enabled pruning modifier covering the parameter)."""
        out: dict[str, torch.Tensor] = {}
        for pruner in self.pruners:
            if not pruner.enabled or pruner.masks is None:
                continue
            for name, mask in pruner.masks.items():
                out[name] = mask if name not in out else (out[name] & mask)
        return out

    def _rebuild_masks(self) -> None:
        """Cache (name, Parameter, mask in the param's dtype/device); executors' bool masks follow the device."""
        params = dict(self.model.named_parameters())
        for pruner in self.pruners:
            if pruner.masks is not None:
                for name, mask in pruner.masks.items():
                    if mask.device != params[name].device:
                        pruner.masks[name] = mask.to(params[name].device)
        self._masked = [(n, params[n], m.to(params[n].dtype)) for n, m in self.masks.items()]
        # Parameter objects (not .data) so model.to(device) / .float(), which swap .data, are still covered
        self._foreach = ([p for _, p, _ in self._masked], [m for _, _, m in self._masked])

    def _check_devices(self) -> None:
        if any(p.device != m.device or p.dtype != m.dtype for _, p, m in self._masked):
            self._rebuild_masks()

    @torch.no_grad()
    def _mask_weights(self) -> None:
        if self._foreach[0]:
            self._check_devices()
            torch._foreach_mul_(*self._foreach)

    @torch.no_grad()
    def _mask_optimizer_state(self) -> None:
        """Zero momentum / Adam moments of newly pruned weights (run when masks change, not every step)."""
        if self.optimizer is None:
            return
        for _, param, mask in self._masked:
            for value in self.optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.mul_(mask)

    def _before_step(self) -> None:
        self._flush()
        self._check_devices()
        self._mask_grads()

    @torch.no_grad()
    def _mask_grads(self) -> None:
        grads, masks = [], []
        for _, param, mask in self._masked:
            if param.grad is not None:
                grads.append(param.grad)
                masks.append(mask)
        if grads:
            torch._foreach_mul_(grads, masks)

    @torch.no_grad()
    def apply_masks(self, model: torch.nn.Module | None = None) -> None:
        """Zero masked weights in ``model`` (default: the managed one), matched by parameter name — e.g. the
        trainer's EMA copy, which the optimizer hooks do not reach."""
        self._flush()
        if model is None or model is self.model:
            self._mask_weights()
            return
        params = dict(model.named_parameters())
        targets, masks = [], []
        for name, _, mask in self._masked:
            target = params.get(name)
            if target is None:
                raise UserError(f"apply_masks: model has no parameter '{name}' (masks are by name)")
            targets.append(target)
            masks.append(mask if (mask.device, mask.dtype) == (target.device, target.dtype)
                         else mask.to(device=target.device, dtype=target.dtype))
        if targets:
            torch._foreach_mul_(targets, masks)

    def sparsity(self, model: torch.nn.Module | None = None) -> tuple[float, dict[str, float]]:
        """(overall, per-layer) fraction of zeros over the pruned params, or all Conv/Linear weights if none."""
        self._flush()
        model = model or self.model
        names = [n for p in self.pruners for n in p.names]
        if not names:
            names = prunable_names(model)
        params = dict(model.named_parameters())
        return zero_fractions({name: params[name] for name in dict.fromkeys(names) if name in params})

    # ------------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Masks (bool, by name) and schedule position, for checkpoints; ``load_state_dict`` resumes from it."""
        self._flush()
        return {
            "epoch": self.epoch,
            "recipe_sha256": self.recipe.sha256,
            "masks": {n: m.clone() for n, m in self.masks.items()},
            "pruners": [p.state_dict() for p in self.pruners],
            "lrs": [lr.state_dict() for lr in self.lrs],
            "handlers": [h.state_dict() for _, h in self.handlers],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore masks and schedule position saved by ``state_dict`` (call after ``initialize``)."""
        if not self.initialized:
            raise RuntimeError("RecipeManager.load_state_dict before initialize")
        pruners, lrs = state.get("pruners", []), state.get("lrs", [])
        if len(pruners) != len(self.pruners) or len(lrs) != len(self.lrs):
            raise UserError(f"{self.recipe.path or '<recipe>'}: saved recipe state has {len(pruners)} pruning and "
                            f"{len(lrs)} LR modifiers; this recipe has {len(self.pruners)} and {len(self.lrs)} — "
                            "resume with the recipe the checkpoint was trained with")
        for pruner, saved in zip(self.pruners, pruners):
            pruner.load_state_dict(saved)
        for lr, saved in zip(self.lrs, lrs):
            lr.load_state_dict(saved)
        for (_, handler), saved in zip(self.handlers, state.get("handlers", [])):
            handler.load_state_dict(saved)
        self.epoch = float(state.get("epoch", self.epoch))
        self._pending = False
        self._rebuild_masks()
        self._mask_weights()
        self._mask_optimizer_state()
