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
from sparse_core.tracking.redaction import redact
from sparse_core.export import graph

MIN_OPSET, MAX_OPSET = 13, 21  # 13: per-channel QuantizeLinear; 21: newest onnxruntime/onnx we test against
TORCH_MAX_OPSET = 20  # torch's TorchScript exporter stops at 20; 21 is reached with onnx's version converter
DEFAULT_IMGSZ = 640


def conv_zero_count(model: torch.nn.Module) -> tuple[int, int]:
    """(zeros, params) over the weights of every Conv module of a PyTorch model."""
    zeros = params = 0
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            w = m.weight.detach()
            zeros += int((w == 0).sum())
            params += w.numel()
    return zeros, params


def is_quantized(model: torch.nn.Module) -> bool:
    from torch.ao.quantization import FakeQuantizeBase

    return any(isinstance(m, FakeQuantizeBase) for m in model.modules())


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


def export_model(
    weights: str | os.PathLike | dict,
    out: str | os.PathLike,
    imgsz: int | None = None,
    batch: int = 1,
    opset: int = 17,
    simplify: bool = True,
) -> dict[str, Any]:
    """Export ``weights`` to the deployment folder ``out``; returns the content of ``out/export.json``.

    ``weights`` is a checkpoint path or an already loaded checkpoint dict (a training step can export in-process).
    """
    from ultralytics.nn.tasks import guess_model_task

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder; expected a folder path")
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:  # before the (slow) checkpoint load
        raise UserError(f"--opset: {opset} is not supported; expected an integer in [{MIN_OPSET}, {MAX_OPSET}]")
    if isinstance(weights, dict):
        ckpt = weights
        if not isinstance(ckpt.get("ema") or ckpt.get("model"), torch.nn.Module):
            raise UserError("weights: checkpoint dict has no 'model' or 'ema' module")
        weights = "<checkpoint dict>"
    else:
        from sparse_core.sparseml_compat import resolve_sparseml

        weights = resolve_sparseml(weights)  # a SparseML checkpoint is exported from our import of it
        ckpt = load_checkpoint(weights)
    meta = sparsepipe_meta(ckpt)
    model = copy.deepcopy(checkpoint_model(ckpt))
    if not hasattr(model, "stride") or not hasattr(model, "yaml"):
        raise UserError(f"{weights}: model is not an Ultralytics YOLO model (no stride/yaml); expected a detector or segmenter checkpoint")
    stride = int(max(model.stride))
    imgsz = _default_imgsz(ckpt, meta) if imgsz is None else imgsz
    _check_args(weights, imgsz, batch, opset, stride)
    quantized = is_quantized(model)
    if meta.get("quantized") and not quantized:
        raise UserError(f"{weights}: sparsepipe.quantized is true but the model holds no FakeQuantize modules; "
                        "expected the QAT model as saved by training")
    task = getattr(model, "task", None) or meta.get("task") or guess_model_task(model)
    names = model.names if isinstance(getattr(model, "names", None), dict) else dict(enumerate(getattr(model, "names", []) or []))
    zeros_checkpoint, _ = conv_zero_count(model)

    # reference output from the unfused model (Detect already in export mode), then fuse + export
    from ultralytics.nn.modules import Detect

    model.float().eval()
    for m in model.modules():
        if isinstance(m, Detect):
            m.dynamic, m.export, m.format, m.shape, m.xyxy = False, True, "onnx", None, False
    if quantized:
        _freeze_fake_quant(model)
    gen = torch.Generator().manual_seed(0)
    channels = model.yaml.get("channels", 3)
    probe = torch.rand(batch, channels, imgsz, imgsz, generator=gen)
    with torch.no_grad():
        reference = [t.numpy() for t in _as_tuple(model(probe))]
    model, im = prepare_model(model, batch, imgsz, quantized)
    zeros_prepared, _ = conv_zero_count(model)
    output_names = [f"output{i}" for i in range(len(reference))]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        onnx_path = tmp / "model.onnx"
        try:
            _torch_to_onnx(model, im, onnx_path, opset, output_names)
        except Exception as err:
            raise RuntimeError(f"torch.onnx.export failed for {weights}: {type(err).__name__}: {err}") from err
        proto = onnx.load(str(onnx_path))
        stats_raw = graph.weight_stats(proto)
        simplified, simplify_error = False, None
        if simplify:
            try:
                import onnxslim

                slim = onnxslim.slim(copy.deepcopy(proto))
                if graph.weight_stats(slim)["zeros"] == stats_raw["zeros"]:
                    proto, simplified = slim, True
                else:
                    simplify_error = "onnxslim changed the zero count; kept the unsimplified graph"
            except Exception as err:  # a simplifier bug must not block export; the torch graph is valid
                simplify_error = f"{type(err).__name__}: {err}"[:200]
        folded = graph.fold_weight_quantization(proto) if quantized else 0
        graph.strip_unused_opsets(proto)
        if proto.ir_version > 10:  # onnxruntime builds in the field still read IR 10 at most
            proto.ir_version = 10
        del proto.metadata_props[:]
        for k, v in _metadata(model, task, imgsz, batch, opset, stride, names).items():
            proto.metadata_props.add(key=k, value=v)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(onnx_path))

        stats = graph.weight_stats(proto)
        if not quantized and stats["zeros"] != zeros_prepared:
            raise RuntimeError(f"export lost sparsity: {zeros_prepared} zero conv weights in PyTorch, {stats['zeros']} in ONNX")
        outputs = _ort_outputs(onnx_path, probe.numpy())
        parity = max(float(np.abs(o - r).max()) for o, r in zip(outputs, reference))
        optimized = graph.ort_optimized_graph(onnx_path)
        if quantized and not optimized["integer_convs"]:
            raise RuntimeError(
                "quantized export: onnxruntime runs no conv with integer kernels; it fuses only DQ->Conv->Q, so the "
                "QAT model must fold BatchNorm into the conv and fake-quantize its input, weights and output (before "
                f"the activation); graph after onnxruntime's optimisation: {optimized['node_types']}"
            )

        recipe = meta.get("recipe_resolved") or meta.get("recipe")
        (tmp / "recipe.yaml").write_text(  # secrets never leave in a deployment folder (same rule as MLflow)
            redact(recipe) if recipe else "# dense model: the checkpoint carries no sparsepipe recipe (nothing was sparsified)\n"
        )
        data = {"task": task, "nc": len(names), "names": names, "imgsz": imgsz, "stride": stride,
                "batch": batch, "channels": channels}
        (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        sig = graph.io_signature(proto)
        info = {
            "model": "model.onnx",
            "source": str(weights),
            "task": task,
            "quantized": quantized,
            "opset": opset,
            "ir_version": proto.ir_version,
            "imgsz": imgsz,
            "batch": batch,
            **sig,
            **graph.file_sizes(onnx_path),
            "sha256": graph.sha256(onnx_path),
            **stats,
            "zeros_pytorch": zeros_checkpoint,
            "simplified": simplified,
            "simplify_error": simplify_error,
            "weight_quantize_folded": folded,
            "node_types": graph.node_histogram(proto),
            "ort_optimized": optimized,
            "parity_max_abs_diff": parity,
            "parity_note": "max |onnxruntime - PyTorch| on a seeded uniform[0,1) input; PyTorch side unfused"
            + (" fake-quant" if quantized else " FP32"),
            "versions": _versions(),
            # lineage: the MLflow run that trained this checkpoint (export/benchmark/register log into it)
            "mlflow_run_id": meta.get("mlflow_run_id"),
            "recipe_sha256": meta.get("recipe_sha256"),
            "data_hash": meta.get("data_hash"),
            "base": meta.get("base"),
        }
        info = json.loads(redact(json.dumps(info)))
        (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n")
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return info


def _versions() -> dict[str, str]:
    import onnxruntime
    import ultralytics

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "ultralytics": ultralytics.__version__}


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
