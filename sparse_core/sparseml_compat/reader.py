"""Read a SparseML 1.x Ultralytics checkpoint as data: ``torch.load(weights_only=True)``, never full unpickling.

SparseML's YOLOv8 trainer saves a dict: ``model`` / ``ema`` (state dicts; ``ema`` is None once QAT disabled the
EMA), ``model_yaml`` (dict), ``recipe`` (``str(manager)``: the resolved recipe), ``epoch`` (index of the last
finished epoch, -1 when the recipe finished), ``optimizer`` (state dict), ``train_args``, ``source: "sparseml"``.
The only globals such a file needs beyond tensors are numpy scalars/dtypes (``best_fitness`` and SGD's momentum are
numpy floats); exactly those are allow-listed.

``str(manager)`` writes list/dict fields as Python reprs (``params: ['re:a\\\\.b']``,
``scheme: {..., 'output_activations': 'null'}``), which YAML reads differently from Python (backslashes stay
doubled, ``'null'`` stays a string).
``carried_recipe`` re-reads those values with ``ast.literal_eval`` so the recipe means what SparseML meant.
"""

from __future__ import annotations

import ast
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparse_core.errors import UserError

REQUIRED = ("model", "model_yaml", "epoch")
_REPR_LINE = re.compile(r"^(\s+[A-Za-z_][A-Za-z0-9_]*: )(\[.*\]|\{.*\})\s*$")


def _numpy_globals() -> list:
    """numpy scalar reconstructor + dtypes, under the names numpy 1.x (SparseML's pin) and numpy 2 write them."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype, *dtypes]


def _load(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a PyTorch zip checkpoint; expected a SparseML .pt file")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - an unpickler refusal or a truncated file is bad input
        msg = str(err).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:200]
        raise UserError(f"{path}: cannot be read as data (weights_only): {msg}; a SparseML checkpoint holds only "
                        "tensors, numbers, strings and dicts") from None


@dataclass
class SparseMLCheckpoint:
    """The parts of a SparseML checkpoint the importer uses (all plain data)."""

    path: Path
    state: dict[str, torch.Tensor]  # the weights SparseML's own loader uses: ema if saved, else model
    state_key: str  # "ema" or "model"
    model_state: dict[str, torch.Tensor]
    model_yaml: dict
    recipe: str | None
    epoch: int
    train_args: dict = field(default_factory=dict)
    optimizer: dict | None = None
    ema_updates: int | None = None
    best_fitness: float | None = None
    version: str | None = None
    date: str | None = None

    @property
    def finished(self) -> bool:
        return self.epoch < 0

    @property
    def quantized(self) -> bool:
        return any(".weight_fake_quant." in k or ".activation_post_process." in k for k in self.state)

    def carried_recipe(self) -> str | None:
        return normalize_recipe(self.recipe) if self.recipe else None


def normalize_recipe(text: str) -> str:
    """SparseML's ``str(manager)`` → the same recipe with Python-repr field values rewritten as JSON (YAML flow)."""
    out = []
    for line in text.splitlines():
        m = _REPR_LINE.match(line)
        if m:
            try:
                value = _nulls(ast.literal_eval(m.group(2)))
                line = m.group(1) + json.dumps(value)
            except (ValueError, SyntaxError):
                pass  # already YAML flow (a hand-written recipe): leave it to the YAML reader
        out.append(line)
    return "\n".join(out) + "\n"


def _nulls(value: Any) -> Any:
    if value == "null":
        return None
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nulls(v) for v in value]
    return value


def read_checkpoint(path: str | os.PathLike) -> SparseMLCheckpoint:
    """Read and check a SparseML checkpoint; a foreign or incomplete file is a UserError naming the field."""
    path = Path(path)
    ckpt = _load(path)
    if not isinstance(ckpt, dict) or ckpt.get("source") != "sparseml":
        raise UserError(f"{path}: not a SparseML checkpoint; expected a dict with source: 'sparseml'")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise UserError(f"{path}: SparseML checkpoint lacks field(s) {', '.join(missing)}; "
                        f"expected {', '.join(REQUIRED)}")
    for key in ("model", "ema"):
        value = ckpt.get(key)
        if value is not None and not (isinstance(value, dict) and all(torch.is_tensor(v) for v in value.values())):
            raise UserError(f"{path}: field '{key}': expected a state dict (names to tensors), "
                            f"got {type(value).__name__}")
    if not isinstance(ckpt["model_yaml"], dict) or "backbone" not in ckpt["model_yaml"]:
        raise UserError(f"{path}: field 'model_yaml': expected an Ultralytics model yaml (dict with 'backbone')")
    recipe = ckpt.get("recipe")
    if recipe is not None and not isinstance(recipe, str):
        raise UserError(f"{path}: field 'recipe': expected the recipe text, got {type(recipe).__name__}")
    ema = ckpt.get("ema")
    best = ckpt.get("best_fitness")
    return SparseMLCheckpoint(
        path=path, state=dict(ema or ckpt["model"]), state_key="ema" if ema else "model",
        model_state=dict(ckpt["model"]), model_yaml=dict(ckpt["model_yaml"]), recipe=recipe, epoch=int(ckpt["epoch"]),
        train_args=dict(ckpt.get("train_args") or {}), optimizer=ckpt.get("optimizer"),
        ema_updates=ckpt.get("updates"), best_fitness=None if best is None else float(best),
        version=ckpt.get("version"), date=ckpt.get("date"))


def is_sparseml_checkpoint(path: str | os.PathLike) -> bool:
    """True for a file SparseML's trainer wrote (``source: "sparseml"``); False for anything else, never raising."""
    path = Path(path)
    if not (path.is_file() and zipfile.is_zipfile(path)):
        return False
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - pickled modules (Ultralytics' own files) are not SparseML's
        return False
    return isinstance(ckpt, dict) and ckpt.get("source") == "sparseml"
