"""Parameter selectors of SparseML recipes: exact names, ``re:<regex>``, ``__ALL__``, ``__ALL_PRUNABLE__``.

Pruning works on weight tensors only: a regex or ``__ALL__`` skips 1-D parameters (biases, BatchNorm), which
SparseML would also mask — a freshly built model's BN biases are all zero, and masking them would freeze them at 0.
An exact name is taken as written. A selector that matches nothing is an error naming it and its recipe line.
"""

from __future__ import annotations

import re

import torch

from sparse_core.errors import UserError
from sparse_core.recipe.schemas import ALL_PRUNABLE_TOKEN, ALL_TOKEN

PRUNABLE_TYPES = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)


def prunable_names(model: torch.nn.Module) -> list[str]:
    """``<module>.weight`` of every Conv/Linear layer whose weight has ndim > 1, in model order."""
    out = []
    for mod_name, mod in model.named_modules():
        weight = getattr(mod, "weight", None)
        if isinstance(mod, PRUNABLE_TYPES) and isinstance(weight, torch.nn.Parameter) and weight.ndim > 1:
            out.append(f"{mod_name}.weight" if mod_name else "weight")
    return out


def match_selector(selector: str, names: list[str], prunable: list[str], weights_only: bool,
                   ndims: dict[str, int]) -> list[str]:
    """Names one selector picks out of ``names`` (model order)."""
    if selector.upper() == ALL_PRUNABLE_TOKEN:
        return list(prunable)
    if selector.upper() == ALL_TOKEN:
        return [n for n in names if not weights_only or ndims[n] > 1]
    if selector.startswith("re:"):
        pattern = re.compile(selector[3:])
        return [n for n in names if pattern.match(n) and (not weights_only or ndims[n] > 1)]
    return [selector] if selector in ndims else []


def resolve_params(selectors: str | list[str], model: torch.nn.Module, where: str,
                   weights_only: bool = True, strict: bool = True) -> list[str]:
    """Parameter names matched by any selector, de-duplicated, in model order.

    ``where`` ("file:line: ModifierName") prefixes the error raised when a selector matches nothing (strict).
    """
    selectors = [selectors] if isinstance(selectors, str) else list(selectors)
    ndims = {n: p.ndim for n, p in model.named_parameters()}
    names = list(ndims)
    prunable = prunable_names(model)
    picked: set[str] = set()
    for sel in selectors:
        hits = match_selector(sel, names, prunable, weights_only, ndims)
        if not hits and strict:
            hint = f"; parameter names look like '{prunable[0]}'" if prunable else ""
            raise UserError(f"{where}: params: selector '{sel}' matches no parameter of the model{hint}")
        picked.update(hits)
    return [n for n in names if n in picked]
