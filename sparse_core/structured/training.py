"""The two places structured pruning meets the Ultralytics trainer (called from the integration's trainer.py).

- after training: ``thin_trained_checkpoints`` removes the channels a ``mask_type: filter`` recipe zeroed from
  ``last.pt`` and ``best.pt`` (in place, atomically) and writes ``structured.json`` next to them;
- before training: ``training_model`` hands Ultralytics a thinned checkpoint's own module. Ultralytics rebuilds a
  ``.pt`` model from its yaml and copies matching tensors, which would silently drop every thinned layer.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from sparse_core.checkpoint import save_atomic
from sparse_core.errors import UserError
from sparse_core.safe_load import load_pt
from sparse_core.structured.executor import StructuredGMPExecutor
from sparse_core.structured.thin import THINNED_ATTR, thin_model


def thin_checkpoint(ckpt: dict[str, Any], imgsz: int = 64) -> dict[str, Any] | None:
    """Thin the model (and EMA) of a loaded checkpoint in place; records the report in its sparsepipe entry."""
    report = None
    for key in ("model", "ema"):
        module = ckpt.get(key)
        if isinstance(module, torch.nn.Module):
            r = thin_model(module, imgsz=imgsz)
            report = report or r
    if report is not None and isinstance(ckpt.get("sparsepipe"), dict):
        ckpt["sparsepipe"]["structured"] = report
    return report


def thin_trained_checkpoints(trainer) -> dict[str, Any] | None:
    """After a recipe with structured pruning finished: thin last.pt / best.pt, write structured.json."""
    manager = getattr(trainer, "manager", None)
    pruners = [p for p in getattr(manager, "pruners", []) if isinstance(p, StructuredGMPExecutor)]
    if not pruners:
        return None
    out: dict[str, Any] = {"groups": [g for p in pruners for g in p.sparsity_report()]}
    for kind, path in (("last", Path(trainer.last)), ("best", Path(trainer.best))):
        if path.exists():
            ckpt = load_pt(path)
            out[kind] = thin_checkpoint(ckpt)
            save_atomic(ckpt, path)
    target = Path(trainer.save_dir) / "structured.json"
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, target)
    return out


def training_model(trainer, weights: torch.nn.Module | None) -> torch.nn.Module | None:
    """A trainable copy of a thinned checkpoint model, or None for any other model (Ultralytics builds it)."""
    if weights is None or not getattr(weights, THINNED_ATTR, False):
        return None
    nc = trainer.data["nc"]
    if getattr(weights, "nc", nc) != nc:
        raise UserError(f"{getattr(weights, 'pt_path', 'model')}: thinned model predicts {weights.nc} classes, the "
                        f"data has {nc}; a thinned model's head cannot be rebuilt for other classes")
    model = copy.deepcopy(weights).float()
    for p in model.parameters():
        p.requires_grad = True
    return trainer.set_model_names_for_load(model) if hasattr(trainer, "set_model_names_for_load") else model
