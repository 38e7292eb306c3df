"""Accuracy of an exported ONNX model, computed by onnxruntime through Ultralytics' validator.

The metrics come from the very code that scores ``.pt`` checkpoints (``integrations.ultralytics.run.val``, whose
AutoBackend runs ``.onnx`` files with onnxruntime), so a PyTorch-vs-ONNX mAP difference is the model's, never the
metric's. This module adds what an exported file needs first: a clear error for a broken file, a check that the
requested size and the data set's classes fit the static graph, and which runtime produced the numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from sparse_core.errors import UserError
from sparse_core.export import graph


def _names(data_yaml: Path) -> dict | list:
    try:
        data = yaml.safe_load(data_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{data_yaml}: cannot read data yaml ({type(err).__name__}: {err})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if not isinstance(names, (dict, list)):
        raise UserError(f"{data_yaml}: names: missing; expected a list or mapping of class names")
    return names


def val_onnx(onnx_path: str | os.PathLike, data_yaml: str | os.PathLike, imgsz: int | None = None, batch: int = 1,
             plots: bool = False) -> dict[str, Any]:
    """mAP of ``onnx_path`` (``.onnx`` or deployment folder) on ``data_yaml``'s val split, run by onnxruntime.

    Returns the keys of ``integrations.ultralytics.run.val`` (``map50``, ``map50_95``, ``precision``, ``recall``,
    ``task``, ``imgsz``, ``weights``; mask mAPs for segmenters) plus ``engine``, ``engine_version``, ``quantized``,
    ``batch``. ``imgsz``/``batch`` must match a static input shape (exports are static); None takes the model's.
    """
    import onnxruntime as ort

    from sparse_core.integrations.ultralytics.run import val

    path = graph.deployment_model(onnx_path)
    proto = graph.load_onnx(path)
    inputs = graph.io_signature(proto)["inputs"]
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
        raise UserError(f"{path}: expected one image input (N, C, H, W); found {[i['shape'] for i in inputs]}")
    n, _, h, w = inputs[0]["shape"]
    if imgsz is not None and isinstance(h, int) and (h, w) != (imgsz, imgsz):
        raise UserError(f"--imgsz: {imgsz} does not match {path} (static input {inputs[0]['shape']}); expected {h}")
    if isinstance(n, int) and batch not in (None, n):
        raise UserError(f"--batch: {batch} does not match {path} (static input {inputs[0]['shape']}); expected {n}")
    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise UserError(f"{data_yaml}: data yaml not found")
    meta = {p.key: p.value for p in proto.metadata_props}
    ops = graph.node_histogram(proto)
    del proto
    deployment = path.parent / "data.yaml"
    if deployment.is_file():
        model_nc, data_nc = len(_names(deployment)), len(_names(data_yaml))
        if model_nc != data_nc:
            raise UserError(f"{data_yaml}: names: {data_nc} classes, but {path} was exported with {model_nc} "
                            f"({deployment}); expected the data set the model was trained on")
    elif "names" not in meta:
        raise UserError(f"{path}: no class names (no data.yaml beside it, no Ultralytics metadata); export it with "
                        "`sparsepipe export`")
    size = imgsz or (h if isinstance(h, int) else None)
    result = val(str(path), data=str(data_yaml), imgsz=size, batch=n if isinstance(n, int) else batch, plots=plots,
                 device="cpu")
    return {**result, "engine": "onnxruntime", "engine_version": ort.__version__,
            "quantized": "QuantizeLinear" in ops or "DequantizeLinear" in ops, "batch": n if isinstance(n, int) else batch}
