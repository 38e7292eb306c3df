"""Execution of recipe modifiers on a torch model: ``RecipeManager`` and the executor registry
(``register_executor``, ``ModifierExecutor``) every kind of modifier plugs into."""

from sparse_core.modifiers.manager import RecipeManager
from sparse_core.modifiers.pruning import interpolate
from sparse_core.modifiers.registry import ModifierExecutor, register_executor
from sparse_core.modifiers.selectors import prunable_names, resolve_params

__all__ = ["ModifierExecutor", "RecipeManager", "interpolate", "prunable_names", "register_executor",
           "resolve_params"]
