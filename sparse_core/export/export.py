"""Export a sparsepipe/Ultralytics checkpoint to a deployment folder: model.onnx, recipe.yaml, data.yaml, export.json.

The model is prepared the way Ultralytics' own exporter does it (eval, Conv+BN fused, Detect head in export mode
with a static shape, C2f split), so the ONNX output is Ultralytics' standard ``(batch, 4 + nc, anchors)`` and its
validator/AutoBackend can run it. Quantized (QAT) models keep their fake-quant modules, are not re-fused, and are
exported with the TorchScript exporter (``dynamo=False``), which turns FakeQuantize into QuantizeLinear /
DequantizeLinear; weight quantization is then folded to INT8 initializers. Zeros are checked to survive exactly.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import yaml

from sparse_core.checkpoint import checkpoint_model, load_checkpoint, sparsepipe_meta
from sparse_core.errors import UserError
from sparse_core.export import accuracy, graph, qdq
from sparse_core.quantization.modules import is_quantized
from sparse_core.tracking.redaction import redact

MIN_OPSET, MAX_OPSET = 13, 21  # 13: per-channel QuantizeLinear; 21: newest onnxruntime/onnx we test against
TORCH_MAX_OPSET = 20  # torch's TorchScript exporter stops at 20; 21 is reached with onnx's version converter
DEFAULT_IMGSZ = 640


def conv_zero_count(model: torch.nn.Module) -> tuple[int, int]:
    """(zeros, params) over the weights of every Conv module of a PyTorch model but the DFL's fixed arange conv
    (exported as reductions, see ``_dfl_forward``)."""
    from ultralytics.nn.modules.block import DFL

    dfl = {id(m.conv) for m in model.modules() if isinstance(m, DFL)}
    zeros = params = 0
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and id(m) not in dfl:
            w = m.weight.detach()
            zeros += int((w == 0).sum())
            params += w.numel()
    return zeros, params


def _freeze_fake_quant(model: torch.nn.Module) -> None:
    """Observers off (ranges are final) and plain FakeQuantize forward for every fake-quant module.

    ``FusedMovingAvgObsFakeQuantize`` (torch's default QAT qconfig) runs a fused op no ONNX exporter handles; with
    its observer disabled it computes exactly what ``FakeQuantize.forward`` does, which exports as Q/DQ.
    """
    from torch.ao.quantization import FakeQuantize, FusedMovingAvgObsFakeQuantize

    for m in model.modules():
        if isinstance(m, FakeQuantize):
            m.disable_observer()
            if isinstance(m, FusedMovingAvgObsFakeQuantize):
                m.forward = types.MethodType(FakeQuantize.forward, m)


def prepare_model(model: torch.nn.Module, batch: int, imgsz: int, quantized: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    """Put an Ultralytics model in export form (see module docstring); returns (model, example input)."""
    from ultralytics.nn.modules import C2f, Detect
    from ultralytics.nn.modules.block import DFL

    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad = False
    if quantized:
        _freeze_fake_quant(model)
    else:
        model = model.fuse(verbose=False)
    for m in model.modules():
        if isinstance(m, Detect):  # includes Segment/Pose/OBB
            m.dynamic, m.export, m.format, m.shape = False, True, "onnx", None
            m.xyxy = False
        elif isinstance(m, C2f):
            m.forward = m.forward_split
        elif isinstance(m, DFL):
            m.forward = types.MethodType(_dfl_forward, m)
    channels = model.yaml.get("channels", 3) if isinstance(getattr(model, "yaml", None), dict) else 3
    return model, torch.zeros(batch, channels, imgsz, imgsz)


def _as_tuple(y: Any) -> tuple[torch.Tensor, ...]:
    return tuple(y) if isinstance(y, (list, tuple)) else (y,)


def _torch_to_onnx(model: torch.nn.Module, im: torch.Tensor, path: Path, opset: int, output_names: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation / tracer warnings: expected here
        torch.onnx.export(
            model, im, str(path), opset_version=min(opset, TORCH_MAX_OPSET), input_names=["images"],
            output_names=output_names, dynamo=False, do_constant_folding=True,
        )
    if opset > TORCH_MAX_OPSET:
        from onnx import version_converter

        onnx.save(version_converter.convert_version(onnx.load(str(path)), opset), str(path))


def _ort_outputs(path: Path, im: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: im})


def _metadata(model, task: str, imgsz: int, batch: int, opset: int, stride: int, names: dict) -> dict[str, str]:
    """Ultralytics' ONNX metadata keys (AutoBackend reads them for names/stride/imgsz), plus our provenance."""
    import ultralytics

    return {
        "description": f"sparsepipe export of {Path(str(model.yaml.get('yaml_file', 'model'))).stem}",
        "author": "sparsepipe",
        "version": ultralytics.__version__,
        "stride": str(stride),
        "task": task,
        "batch": str(batch),
        "imgsz": str([imgsz, imgsz]),
        "names": str(names),
        "channels": str(model.yaml.get("channels", 3)),
        "end2end": "False",
        "args": str({"batch": batch, "opset": opset, "dynamic": False, "nms": False, "half": False}),
    }


def _check_args(weights, imgsz, batch, opset, stride: int) -> None:
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"--opset: {opset} is not supported; expected an integer in [{MIN_OPSET}, {MAX_OPSET}]")
    if not isinstance(batch, int) or batch < 1:
        raise UserError(f"--batch: {batch} is invalid; expected an integer >= 1")
    if not isinstance(imgsz, int) or imgsz <= 0 or imgsz % stride:
        raise UserError(f"--imgsz: {imgsz} is invalid for {weights}; expected a positive multiple of the model stride {stride}")


def _default_imgsz(ckpt: dict, meta: dict) -> int:
    for value in (meta.get("imgsz"), (ckpt.get("train_args") or {}).get("imgsz")):
        if isinstance(value, (list, tuple)) and value:
            value = max(value)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_IMGSZ


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished temp folder to ``out``; an existing deployment folder is swapped out, then removed."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _dfl_forward(self, x: torch.Tensor) -> torch.Tensor:
    """DFL as plain reductions: the expected bin ``sum(softmax(x) * arange) = sum(e * arange) / sum(e)`` with
    ``e = exp(x - max)`` over the bin axis; the same numbers (to ~3e-6) as Ultralytics' ``conv(softmax(1))`` of a
    transposed view. Measured on that head alone (1 thread, 640 px: 4 x 16 x 8400): onnxruntime 18.0 ms -> 0.64 ms
    (its Softmax on a non-innermost axis was ~25% of a thin YOLOv8n), OpenVINO 10.3 -> 3.9 ms; softmax over the
    last axis after a transpose helped onnxruntime (1.05 ms) but not OpenVINO (9.7 ms). Stays float, never quantized.
    """
    b, _, a = x.shape
    x = x.view(b, 4, self.c1, a)
    e = (x - x.amax(2, keepdim=True)).exp()
    bins = self.conv.weight.view(1, 1, self.c1, 1).to(x.dtype)
    return ((e * bins).sum(2) / e.sum(2)).view(b, 4, a)


def _load(weights) -> tuple[dict, str]:
    if isinstance(weights, dict):
        if not isinstance(weights.get("ema") or weights.get("model"), torch.nn.Module):
            raise UserError("weights: checkpoint dict has no 'model' or 'ema' module")
        return weights, "<checkpoint dict>"
    from sparse_core.sparseml_compat import resolve_sparseml

    weights = resolve_sparseml(weights)  # a SparseML checkpoint is exported from our import of it
    return load_checkpoint(weights), str(weights)


def _reference(model: torch.nn.Module, quantized: bool, batch: int, imgsz: int) -> tuple[torch.Tensor, list]:
    """Output of the unfused model (Detect in export mode, fake quant frozen) on a seeded input: the parity target."""
    from ultralytics.nn.modules import Detect

    model.float().eval()
    for m in model.modules():
        if isinstance(m, Detect):
            m.dynamic, m.export, m.format, m.shape, m.xyxy = False, True, "onnx", None, False
    if quantized:
        _freeze_fake_quant(model)
    gen = torch.Generator().manual_seed(0)
    probe = torch.rand(batch, model.yaml.get("channels", 3), imgsz, imgsz, generator=gen)
    with torch.no_grad():
        return probe, [t.numpy() for t in _as_tuple(model(probe))]


def _simplify(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, bool, str | None]:
    """onnxslim, kept only when it preserves every zero weight; a simplifier failure never blocks export."""
    zeros = graph.weight_stats(proto)["zeros"]
    try:
        import onnxslim

        slim = onnxslim.slim(copy.deepcopy(proto))
    except Exception as err:
        return proto, False, f"{type(err).__name__}: {err}"[:200]
    if graph.weight_stats(slim)["zeros"] != zeros:
        return proto, False, "onnxslim changed the zero count; kept the unsimplified graph"
    return slim, True, None


def _build_onnx(model, im, path: Path, opset: int, simplify: bool, quantized: bool, metadata: dict, source) -> dict:
    """torch -> ONNX at ``path``, simplified, weight quantization folded to INT8, Q/DQ cleaned, metadata set."""
    try:
        _torch_to_onnx(model, im, path, opset, [f"output{i}" for i in range(metadata.pop("_n_outputs"))])
    except Exception as err:
        raise RuntimeError(f"torch.onnx.export failed for {source}: {type(err).__name__}: {err}") from err
    proto = onnx.load(str(path))
    simplified, simplify_error = False, None
    if simplify:
        proto, simplified, simplify_error = _simplify(proto)
    folded = graph.fold_weight_quantization(proto) if quantized else 0
    cleaned = qdq.clean(proto) if quantized else {}
    graph.strip_unused_opsets(proto)
    if proto.ir_version > 10:  # onnxruntime builds in the field still read IR 10 at most
        proto.ir_version = 10
    del proto.metadata_props[:]
    for k, v in metadata.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return {"proto": proto, "simplified": simplified, "simplify_error": simplify_error,
            "weight_quantize_folded": folded, "qdq_cleanup": cleaned}


def _verify(path: Path, proto, quantized: bool, zeros_prepared: int, probe, reference) -> dict:
    """Zeros kept (FP32), onnxruntime parity with PyTorch, and integer convs for a quantized model."""
    stats = graph.weight_stats(proto)
    if not quantized and stats["zeros"] != zeros_prepared:
        raise RuntimeError(f"export lost sparsity: {zeros_prepared} zero conv weights in PyTorch, {stats['zeros']} in ONNX")
    outputs = _ort_outputs(path, probe.numpy())
    parity = max(float(np.abs(o - r).max()) for o, r in zip(outputs, reference))
    optimized = graph.ort_optimized_graph(path)
    if quantized and not optimized["integer_convs"]:
        raise RuntimeError(
            "quantized export: onnxruntime runs no conv with integer kernels; it fuses only DQ->Conv->Q, so the "
            "QAT model must fold BatchNorm into the conv and fake-quantize its input, weights and output (before "
            f"the activation); graph after onnxruntime's optimisation: {optimized['node_types']}"
        )
    return {"stats": stats, "parity": parity, "optimized": optimized}


def export_model(
    weights: str | os.PathLike | dict,
    out: str | os.PathLike,
    imgsz: int | None = None,
    batch: int = 1,
    opset: int = 17,
    simplify: bool = True,
    data: str | os.PathLike | None = None,
    allow_drop: bool = False,
) -> dict[str, Any]:
    """Export ``weights`` to the deployment folder ``out``; returns the content of ``out/export.json``.

    ``weights`` is a checkpoint path or an already loaded checkpoint dict (a training step can export in-process).
    A quantized model is scored on ``data`` (default: the checkpoint's training data, when present) with PyTorch,
    onnxruntime and OpenVINO (``accuracy``); a drop over 1 point mAP50-95 fails unless ``allow_drop`` flags it.
    """
    from ultralytics.nn.tasks import guess_model_task

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder; expected a folder path")
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:  # before the (slow) checkpoint load
        raise UserError(f"--opset: {opset} is not supported; expected an integer in [{MIN_OPSET}, {MAX_OPSET}]")
    ckpt, source = _load(weights)
    data_yaml = accuracy.resolve_data(data, ckpt)
    meta = sparsepipe_meta(ckpt)
    model = copy.deepcopy(checkpoint_model(ckpt))
    if not hasattr(model, "stride") or not hasattr(model, "yaml"):
        raise UserError(f"{source}: model is not an Ultralytics YOLO model (no stride/yaml); expected a detector or segmenter checkpoint")
    stride = int(max(model.stride))
    imgsz = _default_imgsz(ckpt, meta) if imgsz is None else imgsz
    _check_args(source, imgsz, batch, opset, stride)
    quantized = is_quantized(model)
    if meta.get("quantized") and not quantized:
        raise UserError(f"{source}: sparsepipe.quantized is true but the model holds no FakeQuantize modules; "
                        "expected the QAT model as saved by training")
    task = getattr(model, "task", None) or meta.get("task") or guess_model_task(model)
    names = model.names if isinstance(getattr(model, "names", None), dict) else dict(enumerate(getattr(model, "names", []) or []))
    zeros_checkpoint, _ = conv_zero_count(model)
    probe, reference = _reference(model, quantized, batch, imgsz)
    model, im = prepare_model(model, batch, imgsz, quantized)
    zeros_prepared, _ = conv_zero_count(model)
    metadata = {**_metadata(model, task, imgsz, batch, opset, stride, names), "_n_outputs": len(reference)}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        onnx_path = tmp / "model.onnx"
        built = _build_onnx(model, im, onnx_path, opset, simplify, quantized, metadata, source)
        proto = built.pop("proto")
        checked = _verify(onnx_path, proto, quantized, zeros_prepared, probe, reference)
        data = {"task": task, "nc": len(names), "names": names, "imgsz": imgsz, "stride": stride,
                "batch": batch, "channels": model.yaml.get("channels", 3)}
        info = _info(source, task, quantized, opset, imgsz, batch, proto, onnx_path, checked, built, meta,
                     zeros_checkpoint)
        info = json.loads(redact(json.dumps(info)))  # secrets never leave in a deployment folder
        _write_folder(tmp, meta, data, info)
        if quantized:
            info["float_head"] = qdq.float_head(proto)
            info["deepsparse"] = qdq.deepsparse_form(onnx_path, tmp / qdq.DEEPSPARSE_FILE)
            info["openvino"] = qdq.openvino_form(onnx_path, tmp / qdq.OPENVINO_FILE)
            info["accuracy"] = (accuracy.measure(ckpt, tmp, data_yaml, imgsz, allow_drop) if data_yaml else
                                {"skipped": "no data yaml: pass --data (the checkpoint names none that exists)"})
            _write_folder(tmp, meta, data, info)
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return info


def _write_folder(tmp: Path, meta: dict, data: dict, info: dict) -> None:
    recipe = meta.get("recipe_resolved") or meta.get("recipe")
    (tmp / "recipe.yaml").write_text(  # secrets never leave in a deployment folder (same rule as MLflow)
        redact(recipe) if recipe else "# dense model: the checkpoint carries no sparsepipe recipe (nothing was sparsified)\n"
    )
    (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n")


def _info(source, task, quantized, opset, imgsz, batch, proto, onnx_path: Path, checked: dict, built: dict,
          meta: dict, zeros_checkpoint: int) -> dict[str, Any]:
    """The content of export.json."""
    return {
        "model": "model.onnx",
        "source": source,
        "task": task,
        "quantized": quantized,
        "opset": opset,
        "ir_version": proto.ir_version,
        "imgsz": imgsz,
        "batch": batch,
        **graph.io_signature(proto),
        **graph.file_sizes(onnx_path),
        "sha256": graph.sha256(onnx_path),
        **checked["stats"],
        "zeros_pytorch": zeros_checkpoint,
        **built,
        "opset_imports": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "node_types": graph.node_histogram(proto),
        "ort_optimized": checked["optimized"],
        "parity_max_abs_diff": checked["parity"],
        "parity_note": "max |onnxruntime - PyTorch| on a seeded uniform[0,1) input; PyTorch side unfused"
        + (" fake-quant" if quantized else " FP32"),
        "versions": _versions(),
        # lineage: the MLflow run that trained this checkpoint (export/benchmark/register log into it)
        "mlflow_run_id": meta.get("mlflow_run_id"),
        "recipe_sha256": meta.get("recipe_sha256"),
        "data_hash": meta.get("data_hash"),
        "base": meta.get("base"),
    }


def _versions() -> dict[str, str]:
    import onnxruntime
    import openvino
    import ultralytics

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.__version__, "ultralytics": ultralytics.__version__}


def read_deployment(path: str | os.PathLike) -> dict[str, Any]:
    """data.yaml of a deployment folder (or of the folder holding ``model.onnx``): names, imgsz, task, stride."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    f = folder / "data.yaml"
    if not f.is_file():
        raise UserError(f"{folder}: no data.yaml; expected a deployment folder written by `sparsepipe export`")
    data = yaml.safe_load(f.read_text()) or {}
    if not isinstance(data.get("names"), (dict, list)):
        raise UserError(f"{f}: names: missing; expected a mapping of class index to name")
    return data
