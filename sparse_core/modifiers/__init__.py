"""Execution of recipe modifiers on a torch model: ``RecipeManager`` and the ``register_handler`` plug-in point."""

from sparse_core.modifiers.manager import RecipeManager, register_handler
from sparse_core.modifiers.pruning import interpolate
from sparse_core.modifiers.selectors import prunable_names, resolve_params

__all__ = ["RecipeManager", "interpolate", "prunable_names", "register_handler", "resolve_params"]
