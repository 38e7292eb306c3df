"""Checkpoints: Ultralytics' ``.pt`` format plus a ``sparsepipe`` entry carrying the recipe and its state.

Keeping Ultralytics' layout means ``YOLO("best.pt")`` still loads our files; the extra entry is what lets
``--resume`` continue mid-recipe and export/registry keep lineage. Keys of ``ckpt["sparsepipe"]``:

- ``recipe``: original recipe text; ``recipe_path``; ``recipe_args`` (dict); ``recipe_resolved`` (YAML text)
- ``recipe_epoch``: float epoch the recipe reached; ``manager``: RecipeManager.state_dict() (masks, schedule)
- ``quantized``: bool (model holds fake-quant modules); ``imgsz``; ``task``
- ``mlflow_run_id``, ``data_hash``, ``base`` (checkpoint/zoo stub it started from), ``git_commit``
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sparse_core.atomic import atomic_file
from sparse_core.errors import UserError
from sparse_core.safe_load import load_pt


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load an Ultralytics/sparsepipe ``.pt`` (safely, see ``sparse_core.safe_load``); a missing, truncated, foreign
    or code-carrying file is a UserError."""
    path = Path(path)
    ckpt = load_pt(path)  # allow-listed classes only; full unpickling only for a --trust-checkpoint file
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ema") or ckpt.get("model"), torch.nn.Module):
        raise UserError(f"{path}: not an Ultralytics/sparsepipe checkpoint (expected a dict with a 'model' or 'ema' module)")
    try:  # the safe loader never runs __init__: a module the file did not fill in is caught here, not mid-run
        (ckpt.get("ema") or ckpt.get("model")).state_dict()
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{path}: not an Ultralytics/sparsepipe checkpoint (its model is incomplete: "
                        f"{type(err).__name__}: {str(err)[:100]})") from None
    return ckpt


def checkpoint_model(ckpt: dict[str, Any]) -> torch.nn.Module:
    """The weights to use from a checkpoint: the EMA when present (that is what Ultralytics saves as best), in FP32."""
    model = ckpt.get("ema") or ckpt.get("model")
    return model.float()


def sparsepipe_meta(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The sparsepipe entry of a checkpoint ({} for a plain Ultralytics file)."""
    return dict(ckpt.get("sparsepipe") or {})


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves a half-written file."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
