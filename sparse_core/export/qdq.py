"""Exact clean-up of the Q/DQ graph torch writes for a fake-quant model: every rewrite leaves each value the
graph computes bit-identical, so parity with the PyTorch fake-quant model is untouched.

- **shared quantizers**: torch writes one QuantizeLinear/DequantizeLinear per fake-quant module, so a tensor read
  by several consumers with the same grid is quantized once per consumer; engines then run one eltwise pass each
  (OpenVINO showed them as separate ``Subgraph`` kernels). Identical Q (same input, same scale/zero point) and
  identical DQ (same input) nodes are merged.
- **redundant pairs**: ``DQ(s, z) -> Q(s, z)`` gives back DQ's integer input exactly, so the Q is dropped and its
  readers take the integer tensor (``Q -> DQ -> Q -> DQ`` with one grid becomes ``Q -> DQ``).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from sparse_core.export.graph import _constant_value, node_histogram, remove_unused_initializers, strip_unused_opsets
from sparse_core.export.layout import DEEPSPARSE_FILE, OPENVINO_FILE


def _value(name: str, inits: dict) -> np.ndarray | None:
    return numpy_helper.to_array(inits[name]) if name in inits else None


def _same_params(a: onnx.NodeProto, b: onnx.NodeProto, inits: dict) -> bool:
    """Same scale/zero point values (by value: torch writes equal constants under different names) and axis."""
    if len(a.input) != len(b.input) or [x for x in a.attribute] != [x for x in b.attribute]:
        return False
    for x, y in zip(a.input[1:], b.input[1:]):
        if x == y:
            continue
        vx, vy = _value(x, inits), _value(y, inits)
        if vx is None or vy is None or vx.dtype != vy.dtype or vx.shape != vy.shape or not np.array_equal(vx, vy):
            return False
    return True


def _rename(model: onnx.ModelProto, renames: dict[str, str]) -> None:
    def final(name: str) -> str:
        while name in renames:
            name = renames[name]
        return name

    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = final(name)
    for out in model.graph.output:
        if out.name in renames:  # a graph output keeps its name: re-point the producer instead (rare; skip)
            raise RuntimeError(f"Q/DQ clean-up would rename graph output {out.name}")


def _merge_duplicates(model: onnx.ModelProto, op: str, inits: dict, outputs: set[str]) -> int:
    seen: dict[str, list[onnx.NodeProto]] = {}
    renames, drop = {}, []
    for node in model.graph.node:
        if node.op_type != op or node.output[0] in outputs:
            continue
        twins = seen.setdefault(node.input[0], [])
        match = next((t for t in twins if _same_params(t, node, inits)), None)
        if match is None:
            twins.append(node)
        else:
            renames[node.output[0]] = match.output[0]
            drop.append(node)
    _rename(model, renames)
    for node in drop:
        model.graph.node.remove(node)
    return len(drop)


def _drop_requantize(model: onnx.ModelProto, inits: dict, outputs: set[str]) -> int:
    """Q(DQ(q)) with DQ's own grid is q: drop the Q, its readers take q."""
    producers = {o: n for n in model.graph.node for o in n.output}
    renames, drop = {}, []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.output[0] in outputs:
            continue
        dq = producers.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or not _same_params(dq, node, inits):
            continue
        zq, zd = (_value(n.input[2], inits) if len(n.input) > 2 and n.input[2] else None for n in (node, dq))
        if zq is None or zd is None or zq.dtype != zd.dtype:  # output dtype follows the zero point
            continue
        renames[node.output[0]] = dq.input[0]
        drop.append(node)
    _rename(model, renames)
    for node in drop:
        model.graph.node.remove(node)
    return len(drop)


def _drop_dead(model: onnx.ModelProto, outputs: set[str]) -> int:
    """Remove Q/DQ nodes nobody reads (left behind by the merges)."""
    removed = 0
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            return removed
        for n in dead:
            model.graph.node.remove(n)
        removed += len(dead)


def clean(model: onnx.ModelProto) -> dict[str, int]:
    """Apply the rewrites until none applies; returns how many nodes each removed."""
    inits = {t.name: t for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    counts = {"requantize": 0, "shared_q": 0, "shared_dq": 0, "dead": 0}
    while True:
        step = {"requantize": _drop_requantize(model, inits, outputs),
                "shared_q": _merge_duplicates(model, "QuantizeLinear", inits, outputs),
                "shared_dq": _merge_duplicates(model, "DequantizeLinear", inits, outputs),
                "dead": _drop_dead(model, outputs)}
        for k, v in step.items():
            counts[k] += v
        if not any(step.values()):
            break
    remove_unused_initializers(model)
    return counts



def float_head(model: onnx.ModelProto) -> bool:
    """True when the Detect/Segment head's box decode and DFL run in float: no Q/DQ node reads a tensor that the
    head computes after its prediction convs (Concat/Reshape/Split, DFL softmax, anchors, strides)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.input[0] not in producers:
            continue
        src = producers[node.input[0]]
        if "/dfl/" in src.name or src.op_type in ("Softmax", "Exp", "ReduceSum", "ReduceMax", "Sub", "Div"):
            return False
    return True


def _readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def float_weights_for_float_convs(model: onnx.ModelProto) -> int:
    """Store the weights of convs that run in float (no QuantizeLinear on their output, so no engine fuses them
    into an integer conv: the head's prediction convs) as FP32 constants instead of ``DQ(int8)``: the same values,
    and DeepSparse refuses a conv whose weight is computed ("kernel is not constant"). Returns convs changed."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    cons = _readers(model)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or any(c.op_type == "QuantizeLinear" for c in cons.get(node.output[0], [])):
            continue
        dq = producers.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        value = _constant_value(node.input[1], inits, producers)
        if value is None:
            continue
        name = f"{node.input[1]}_float"
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        node.input[1] = name
        changed += 1
    _drop_dead(model, {o.name for o in model.graph.output})
    remove_unused_initializers(model)
    return changed


SILU_OPS = frozenset({"Sigmoid", "Mul"})


def float_activation_inputs(model: onnx.ModelProto) -> int:
    """Drop the ``Q -> DQ`` pair between a conv and the SiLU that reads it (the scheme fake-quantizes SiLU's input,
    as SparseML's YOLOv8 recipes do): the conv's output then goes to SiLU in float. Why: OpenVINO fuses an int8
    conv with a float SiLU and the next FakeQuantize into one kernel, but runs a quantized SiLU input as a separate
    "FakeQuantize + eltwise" subgraph (22% of the PQ YOLOv8n's time on OpenVINO). One rounding fewer than the
    fake-quant model computes: the export's accuracy gate measures the result. Returns pairs dropped."""
    producers = {o: n for n in model.graph.node for o in n.output}
    readers = _readers(model)
    outputs = {o.name for o in model.graph.output}
    renames, drop, pairs = {}, [], 0
    for q in model.graph.node:
        conv = producers.get(q.input[0]) if q.op_type == "QuantizeLinear" else None
        if conv is None or conv.op_type != "Conv" or len(readers.get(q.input[0], [])) != 1 or q.output[0] in outputs:
            continue
        dqs = readers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" or d.output[0] in outputs for d in dqs):
            continue
        if not all(r.op_type in SILU_OPS for d in dqs for r in readers.get(d.output[0], [])):
            continue
        renames.update({d.output[0]: q.input[0] for d in dqs})
        drop += [q, *dqs]
        pairs += 1
    _rename(model, renames)
    for node in drop:
        model.graph.node.remove(node)
    return pairs


def openvino_form(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """The QDQ model in the form OpenVINO runs fastest: conv outputs to SiLU in float
    (``float_activation_inputs``), every other Q/DQ as exported. Returns facts for export.json."""
    model = onnx.load(str(src))
    dropped = float_activation_inputs(model)
    remove_unused_initializers(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))  # export writes into its temporary folder, renamed whole when complete
    return {"file": OPENVINO_FILE, "float_silu_inputs": dropped, "node_types": node_histogram(model)}


def deepsparse_form(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """The QDQ model in the form DeepSparse 1.8 compiles natively: onnxruntime's own QDQ -> QLinearConv fusion
    (standard ai.onnx ops only), without its Q/DQ propagation across MaxPool (DeepSparse wants float MaxPool
    inputs), float constants for the weights of float convs, only the opset imports in use, IR 8 (DeepSparse's
    onnx 1.14). DeepSparse also needs per-tensor weight scales ("non-scalar or non-uniform scales" otherwise):
    QAT with ``weights: {strategy: tensor}``. Measured on a thin YOLOv8n at 640 px: 0% of the QDQ graph native,
    99.5% of this form with per-tensor weights (35-51% with per-channel). Returns facts for export.json."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["QDQPropagationTransformer"])
    model = onnx.load(str(dst))
    # recipes quantizing residual adds/activations get onnxruntime contrib ops (QLinearAdd...): kept and reported
    contrib = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    float_convs = float_weights_for_float_convs(model)
    strip_unused_opsets(model)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    scales = [numpy_helper.to_array(t).size for n in model.graph.node if n.op_type == "QLinearConv"
              for t in model.graph.initializer if t.name == n.input[4]]
    return {"file": DEEPSPARSE_FILE, "node_types": node_histogram(model), "float_weight_convs": float_convs,
            "contrib_ops": contrib,
            "per_tensor_weights": bool(scales) and all(s == 1 for s in scales)}
