"""SparseML-compatible recipes: load (YAML / Markdown front matter), override, evaluate, validate, serialise.

Public API: ``load_recipe``, ``parse_recipe_args``, ``Recipe`` and the modifier schemas in ``schemas``.
"""

from sparse_core.recipe.recipe import Recipe, load_recipe, parse_recipe_args
from sparse_core.recipe.schemas import MODIFIERS, Modifier

__all__ = ["MODIFIERS", "Modifier", "Recipe", "load_recipe", "parse_recipe_args"]
