"""ONNX graph helpers shared by export and benchmark: loading with clear errors, weight sparsity as the runtime
sees it (through Q/DQ chains), folding of weight quantization, sizes, and onnxruntime's optimised graph.

Sparsity is measured on the *effective* conv weights (after DequantizeLinear) so an INT8 graph and an FP32 graph
are counted the same way: a weight is zero when the value the Conv consumes is exactly 0.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from sparse_core.errors import UserError
from sparse_core.export.layout import ENGINE_FILES, read_decision

# ops onnxruntime runs with integer arithmetic; their presence in the optimised graph proves INT8 kernels are used
INTEGER_OPS = frozenset({
    "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax",
    "QLinearReduceMean", "QLinearWhere", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm",
})
GZIP_LEVEL = 6  # `gzip` default; level 9 took 12x longer on a 12 MB half-sparse model and was no smaller


def deployment_model(path: str | os.PathLike, engine: str | None = None) -> Path:
    """The ONNX file named by ``path``: an ``.onnx`` file, or a deployment folder holding ``model.onnx``. With
    ``engine``, a QDQ export's form for that engine when the folder has one (``model.deepsparse.onnx``,
    ``model.openvino.onnx``: same weights and grids, written by export; see ``layout``) — unless the folder's
    deployment.json chose ``model.onnx`` for that engine by measurement (``choose``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise UserError(f"{path}: model not found; expected an .onnx file or a deployment folder with model.onnx")
    if path.name == "model.onnx" and (read_decision(path) or {}).get("engine") == engine:
        return path
    own = ENGINE_FILES.get(engine) if path.name == "model.onnx" else None
    return path.parent / own if own and (path.parent / own).is_file() else path


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse and check an ONNX file; a missing, truncated or foreign file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ONNX model not found")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # DecodeError for truncated/foreign bytes, ValidationError for a broken graph
        raise UserError(
            f"{path}: not a valid ONNX model (truncated or not ONNX: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})"
        ) from None
    if not model.graph.node or not model.graph.input:
        raise UserError(f"{path}: not a valid ONNX model (empty graph)")
    return model


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _broadcast(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Per-channel scale/zero-point shaped to broadcast along ``axis`` (per-tensor params pass through)."""
    if param.ndim == 0 or param.size == 1:
        return param.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = param.size
    return param.reshape(shape)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear (round half to even, saturate to the zero-point dtype), as onnxruntime computes it."""
    info = np.iinfo(zero_point.dtype)
    q = np.rint(x / _broadcast(scale, x.ndim, axis)) + _broadcast(zero_point, x.ndim, axis).astype(np.int64)
    return np.clip(q, info.min, info.max).astype(zero_point.dtype)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """ONNX DequantizeLinear."""
    zp = _broadcast(zero_point, q.ndim, axis).astype(np.int64)
    return ((q.astype(np.int64) - zp) * _broadcast(scale, q.ndim, axis)).astype(np.float32)


def _constant_value(name: str, inits: dict, producers: dict) -> np.ndarray | None:
    """Value of a tensor computed from initializers through Identity/QuantizeLinear/DequantizeLinear, else None."""
    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = producers.get(name)
    if node is None:
        return None
    if node.op_type == "Identity":
        return _constant_value(node.input[0], inits, producers)
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        args = [_constant_value(i, inits, producers) if i else None for i in node.input]
        if args[0] is None or args[1] is None:
            return None
        zp = args[2] if len(args) > 2 and args[2] is not None else np.zeros((), np.uint8)
        axis = _attr(node, "axis", 1)
        return (quantize if node.op_type == "QuantizeLinear" else dequantize)(args[0], args[1], zp, axis)
    return None


def conv_weights(model: onnx.ModelProto) -> list[tuple[str, np.ndarray]]:
    """(conv node name, effective weight the Conv consumes) for every Conv whose weight is a constant."""
    inits, producers = _initializers(model), _producers(model)
    out = []
    for i, node in enumerate(model.graph.node):
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
            w = _constant_value(node.input[1], inits, producers)
            if w is not None:
                out.append((node.name or f"{node.op_type}_{i}", w))
    return out


def weight_stats(model: onnx.ModelProto) -> dict[str, Any]:
    """Conv-weight parameter/zero counts and sparsity, plus the same over all initializers (for context)."""
    weights = conv_weights(model)
    params = sum(int(w.size) for _, w in weights)
    zeros = sum(int(np.count_nonzero(w == 0)) for _, w in weights)
    all_params = all_zeros = 0
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype.kind in "fiu" and a.size > 1:
            all_params += int(a.size)
            all_zeros += int(np.count_nonzero(a == 0))
    return {
        "conv_weights": len(weights),
        "conv_params": params,
        "zeros": zeros,
        "sparsity": round(zeros / params, 6) if params else 0.0,
        "initializer_params": all_params,
        "initializer_zeros": all_zeros,
    }


def fold_weight_quantization(model: onnx.ModelProto) -> int:
    """Replace QuantizeLinear nodes whose inputs are all initializers by their integer result.

    torch's exporter writes FP32 weights followed by QuantizeLinear; onnxruntime folds that at load, but the file
    stays 4x larger than needed. Folding here stores INT8 weights (what makes a QDQ model small) with the same
    values onnxruntime would compute. Returns how many nodes were folded.
    """
    inits, producers = _initializers(model), _producers(model)
    folded = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or not all(i == "" or i in inits for i in node.input):
            continue
        if len(node.input) < 3 or not node.input[2]:
            continue  # no zero point: output dtype is uint8 by default; leave such rare nodes to the runtime
        value = _constant_value(node.output[0], inits, producers)
        if value is None:
            continue
        model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    if folded:
        remove_unused_initializers(model)
    return len(folded)


def remove_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for node in model.graph.node for i in node.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def strip_unused_opsets(model: onnx.ModelProto) -> None:
    """Drop opset imports of domains no node uses (DeepSparse 1.8 refuses a stray ``ai.onnx.ml`` import)."""
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def node_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def io_signature(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Input/output names, shapes (int or symbolic name) and element types."""

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
            out.append({"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out

    inits = {t.name for t in model.graph.initializer}
    return {"inputs": describe([i for i in model.graph.input if i.name not in inits]), "outputs": describe(model.graph.output)}


def file_sizes(path: str | os.PathLike) -> dict[str, int]:
    """Raw and gzip-compressed byte counts of a file (gzip at level ``GZIP_LEVEL``)."""
    data = Path(path).read_bytes()
    return {"size_bytes": len(data), "size_gzip_bytes": len(gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0))}


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ort_optimized_graph(path: str | os.PathLike, level: str = "extended") -> dict[str, Any]:
    """Node histogram of the graph onnxruntime actually runs after its optimisations (basic/extended/all).

    ``extended`` is where onnxruntime fuses DQ->Conv->Q into QLinearConv and Conv+activation into FusedConv, and
    the saved graph is still portable; ``all`` adds CPU layout ops (NCHWc).
    """
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[level]
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath)
    hist = node_histogram(optimized)
    return {
        "level": level,
        "node_types": hist,
        "integer_ops": {k: v for k, v in hist.items() if k in INTEGER_OPS},
        "integer_convs": hist.get("QLinearConv", 0) + hist.get("ConvInteger", 0),
        "float_convs": hist.get("Conv", 0) + hist.get("FusedConv", 0),
    }
