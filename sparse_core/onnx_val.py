"""Accuracy of an exported ONNX model, computed by onnxruntime or OpenVINO through Ultralytics' validator.

The metrics come from the very code that scores ``.pt`` checkpoints (``integrations.ultralytics.run.val``, whose
AutoBackend runs ``.onnx`` files with onnxruntime), so a PyTorch-vs-ONNX mAP difference is the model's, never the
metric's. This module adds what an exported file needs first: a clear error for a broken file, a check that the
requested size and the data set's classes fit the static graph, and which runtime produced the numbers.

OpenVINO: the ONNX file is converted to OpenVINO IR in a temporary ``*_openvino_model`` folder (with the ONNX
file's Ultralytics metadata as ``metadata.yaml``), which Ultralytics' OpenVINO backend runs (LATENCY hint, the
engine's default precision: bf16 on AVX512_BF16/AMX CPUs, i.e. what a deployment gets). ``precision`` forces
f32/bf16/f16: that backend builds its own ``ov.Core`` with a fixed config, so the hint is added to its
``compile_model`` call for the duration of the validation only.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
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


def _check_input(path: Path, proto, imgsz: int | None, batch: int | None) -> tuple:
    inputs = graph.io_signature(proto)["inputs"]
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
        raise UserError(f"{path}: expected one image input (N, C, H, W); found {[i['shape'] for i in inputs]}")
    n, _, h, w = inputs[0]["shape"]
    if imgsz is not None and isinstance(h, int) and (h, w) != (imgsz, imgsz):
        raise UserError(f"--imgsz: {imgsz} does not match {path} (static input {inputs[0]['shape']}); expected {h}")
    if isinstance(n, int) and batch not in (None, n):
        raise UserError(f"--batch: {batch} does not match {path} (static input {inputs[0]['shape']}); expected {n}")
    return n, h


def _check_classes(path: Path, data_yaml: Path, meta: dict) -> None:
    deployment = path.parent / "data.yaml"
    if deployment.is_file():
        model_nc, data_nc = len(_names(deployment)), len(_names(data_yaml))
        if model_nc != data_nc:
            raise UserError(f"{data_yaml}: names: {data_nc} classes, but {path} was exported with {model_nc} "
                            f"({deployment}); expected the data set the model was trained on")
    elif "names" not in meta:
        raise UserError(f"{path}: no class names (no data.yaml beside it, no Ultralytics metadata); export it with "
                        "`sparsepipe export`")


def to_openvino_ir(path: Path, folder: Path, meta: dict[str, str]) -> Path:
    """``folder/model_openvino_model/`` holding model.xml/.bin (weights as stored, no FP16 compression),
    metadata.yaml and data.yaml: the layout Ultralytics' OpenVINO backend loads."""
    import openvino as ov

    ir = folder / "model_openvino_model"
    ir.mkdir(parents=True)
    try:
        model = ov.convert_model(str(path))
    except Exception as err:
        raise UserError(f"{path}: OpenVINO cannot convert this model ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''})") from None
    ov.save_model(model, str(ir / "model.xml"), compress_to_fp16=False)
    (ir / "metadata.yaml").write_text(yaml.safe_dump(dict(meta), sort_keys=False))
    if (path.parent / "data.yaml").is_file():
        (ir / "data.yaml").write_text((path.parent / "data.yaml").read_text())
    return ir


@contextlib.contextmanager
def openvino_precision(precision: str | None):
    """Add INFERENCE_PRECISION_HINT to every ``openvino.Core.compile_model`` call inside the block (see module doc)."""
    if precision is None:
        yield
        return
    import openvino as ov

    from sparse_core.bench.engines import PRECISIONS

    if precision not in PRECISIONS:
        raise UserError(f"--precision: {precision!r} is not supported; expected one of {', '.join(PRECISIONS)}")
    original = ov.Core

    class Core(original):
        def compile_model(self, model, device_name=None, config=None, **kw):
            config = {**(config or {}), "INFERENCE_PRECISION_HINT": precision}
            return super().compile_model(model, device_name, config, **kw)

    ov.Core = Core
    try:
        yield
    finally:
        ov.Core = original


def val_onnx(onnx_path: str | os.PathLike, data_yaml: str | os.PathLike, imgsz: int | None = None, batch: int = 1,
             plots: bool = False, engine: str = "onnxruntime", precision: str | None = None) -> dict[str, Any]:
    """mAP of ``onnx_path`` (``.onnx`` or deployment folder) on ``data_yaml``'s val split, run by ``engine``.

    Returns the keys of ``integrations.ultralytics.run.val`` (``map50``, ``map50_95``, ``precision``, ``recall``,
    ``task``, ``imgsz``, ``weights``; mask mAPs for segmenters) plus ``engine``, ``engine_version``, ``quantized``,
    ``batch`` (and ``inference_precision`` for OpenVINO). ``imgsz``/``batch`` must match a static input shape
    (exports are static); None takes the model's. ``precision``: OpenVINO only (f32/bf16/f16; None = its default).
    """
    from sparse_core.integrations.ultralytics.run import val

    if engine not in ("onnxruntime", "openvino"):
        raise UserError(f"--engine: {engine!r} is not supported for val; expected onnxruntime or openvino")
    if precision is not None and engine != "openvino":
        raise UserError(f"--precision: {precision} needs --engine openvino (onnxruntime computes in f32)")
    path = graph.deployment_model(onnx_path, engine)
    proto = graph.load_onnx(path)
    n, h = _check_input(path, proto, imgsz, batch)
    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise UserError(f"{data_yaml}: data yaml not found")
    meta = {p.key: p.value for p in proto.metadata_props}
    ops = graph.node_histogram(proto)
    del proto
    _check_classes(path, data_yaml, meta)
    size = imgsz or (h if isinstance(h, int) else None)
    static_batch = n if isinstance(n, int) else batch
    out = {"engine": engine, "quantized": "QuantizeLinear" in ops or "DequantizeLinear" in ops, "batch": static_batch}
    if engine == "onnxruntime":
        import onnxruntime as ort

        result = val(str(path), data=str(data_yaml), imgsz=size, batch=static_batch, plots=plots, device="cpu")
        return {**result, **out, "engine_version": ort.__version__}
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="sparsepipe-ov-") as tmp:
        ir = to_openvino_ir(path, Path(tmp), meta)
        with openvino_precision(precision):
            result = val(str(ir), data=str(data_yaml), imgsz=size, batch=static_batch, plots=plots, device="cpu")
    resolved = precision or ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    return {**result, **out, "engine_version": ov.__version__, "inference_precision": resolved,
            "weights": str(path)}
