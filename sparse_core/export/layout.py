"""What a deployment folder holds beside ``model.onnx``: the engine-specific forms of a QDQ export (same weights
and grids, rewritten by ``qdq`` for one engine), which ``graph.deployment_model`` picks for that engine, and
``deployment.json``, the form ``choose`` measured fastest, which the benchmark and ``deployment_model`` honour."""

from __future__ import annotations

import json
import os
from pathlib import Path

DEEPSPARSE_FILE = "model.deepsparse.onnx"
OPENVINO_FILE = "model.openvino.onnx"
ENGINE_FILES = {"deepsparse": DEEPSPARSE_FILE, "openvino": OPENVINO_FILE}  # what `deployment_model` picks per engine
DEPLOYMENT_FILE = "deployment.json"


def read_decision(path: str | os.PathLike) -> dict | None:
    """deployment.json of a chosen deployment folder (or of the folder holding ``model.onnx``), else None."""
    path = Path(path)
    f = (path if path.is_dir() else path.parent) / DEPLOYMENT_FILE
    return json.loads(f.read_text()) if f.is_file() else None
