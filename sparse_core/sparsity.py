"""Weight sparsity measurement, shared by training summaries, plots, export checks and the benchmark."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def prunable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Conv and linear weights (ndim > 1): what unstructured pruning can act on."""
    return {
        name: p
        for name, p in model.named_parameters()
        if p.ndim > 1 and name.endswith("weight") and ".dfl." not in name  # DFL is a fixed, frozen projection
    }


def weight_sparsity(model: torch.nn.Module, names: Iterable[str] | None = None) -> tuple[float, dict[str, float]]:
    """(overall, per-layer) fraction of exact zeros over ``names`` (default: every prunable weight)."""
    weights = prunable_weights(model)
    if names is not None:
        wanted = set(names)
        weights = {n: w for n, w in weights.items() if n in wanted}
    return zero_fractions(weights)


def zero_fractions(weights: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """(overall, per-tensor) fraction of exact zeros in ``weights``."""
    per_layer, zeros, total = {}, 0, 0
    for name, w in weights.items():
        z = int((w.detach() == 0).sum())
        per_layer[name] = z / w.numel()
        zeros += z
        total += w.numel()
    return (zeros / total if total else 0.0), per_layer
