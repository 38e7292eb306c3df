"""Why a model is (not) fast on an engine: conv MACs per node, the share of them that runs in integer kernels,
and one plain verdict line from the profile (SparseML users' commonest complaint is "sparse but not faster").

Integer kernels are read from what the engine says it ran, not from what the file holds: onnxruntime's optimised
graph (QLinearConv/ConvInteger nodes) and OpenVINO's performance counters (a Convolution whose exec type ends in
``_I8``/``_U8``).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

INTEGER_CONVS = ("QLinearConv", "ConvInteger")


def _source_initializer(name: str, producers: dict, inits: set) -> str:
    """The initializer a conv weight comes from (through DequantizeLinear/Identity), else the tensor name."""
    seen = 0
    while name not in inits and name in producers and seen < 8:
        node = producers[name]
        if node.op_type not in ("DequantizeLinear", "QuantizeLinear", "Identity"):
            break
        name, seen = node.input[0], seen + 1
    return name


def conv_macs(proto: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Per Conv node: MACs at the model's static input shape, keyed by node name, with its weight's source."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    inits = {t.name: t for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    out = {}
    for i, node in enumerate(proto.graph.node):
        if node.op_type != "Conv":
            continue
        src = _source_initializer(node.input[1], producers, set(inits))
        w = inits.get(src)
        y = shapes.get(node.output[0])
        if w is None or not y or len(y) < 3:
            continue
        spatial = int(np.prod(y[2:])) * (y[0] or 1)
        out[node.name or f"Conv_{i}"] = {"weight": src, "macs": int(np.prod(w.dims)) * spatial,
                                         "output": node.output[0]}
    return out


def ort_integer_share(path: str | os.PathLike, macs: dict[str, dict]) -> dict[str, Any]:
    """Share of conv MACs onnxruntime runs as QLinearConv/ConvInteger after its graph optimisations."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        opt = onnx.load(opts.optimized_model_filepath, load_external_data=False)
    inits = {t.name for t in opt.graph.initializer}
    producers = {o: n for n in opt.graph.node for o in n.output}
    integer_weights = set()
    for node in opt.graph.node:
        if node.op_type in INTEGER_CONVS:
            w = node.input[3] if node.op_type == "QLinearConv" else node.input[1]
            integer_weights.add(_source_initializer(w, producers, inits))
    total = sum(c["macs"] for c in macs.values()) or 1
    integer = sum(c["macs"] for c in macs.values() if c["weight"] in integer_weights)
    return {"integer_conv_mac_share": round(integer / total, 4), "integer_convs": len(integer_weights),
            "convs": len(macs)}


def _is_integer_kernel(exec_type: str) -> bool:
    return exec_type.upper().endswith(("_I8", "_U8"))


def ov_integer_share(conv_kernels: dict[str, str], macs: dict[str, dict]) -> dict[str, Any]:
    """Share of conv MACs OpenVINO ran in I8/U8 kernels (its conv layers keep the ONNX node or output names)."""
    by_name = {}
    for name, info in macs.items():
        by_name[name] = info["macs"]
        by_name[info["output"]] = info["macs"]
    total = sum(c["macs"] for c in macs.values()) or 1
    integer = matched = 0
    for name, kernel in conv_kernels.items():
        m = by_name.get(name)
        if m is None:
            continue
        matched += m
        if _is_integer_kernel(kernel):
            integer += m
    n_int = sum(1 for k in conv_kernels.values() if _is_integer_kernel(k))
    share = integer / total if matched else n_int / max(len(conv_kernels), 1)
    return {"integer_conv_mac_share": round(share, 4), "integer_convs": n_int, "convs": len(conv_kernels),
            "matched_mac_share": round(matched / total, 4),
            "kernels": sorted(set(conv_kernels.values()))}


def _amx_hint(result: dict[str, Any]) -> str:
    """Where OpenVINO ran INT8 convs on AMX kernels: at a thinned model's narrow widths they measured twice as slow
    as AVX-512 VNNI kernels (``openvino_isa``), so say how to try those."""
    kernels = (result.get("integer_kernels") or {}).get("kernels") or []
    if result.get("isa_cap") or not any("amx" in k.lower() and _is_integer_kernel(k) for k in kernels):
        return ""
    from sparse_core.bench.openvino_isa import VNNI_CAP

    return f"; its INT8 convs ran on AMX kernels (slow at narrow widths): try --isa {VNNI_CAP}"


def verdict(result: dict[str, Any]) -> str:
    """One plain line: is the model paying off on this engine, and if not, where the time goes."""
    prof = result.get("profile") or {}
    share = result.get("integer_conv_mac_share")
    speed = result.get("speedup")
    base = f"{speed:.2f}x the baseline" if speed is not None else "no baseline given (--compare DENSE)"
    top = (prof.get("ops") or [{}])[0]
    top_txt = f"top op {top['op']} {top['share']:.0%}" if top else ""
    if result.get("quantized"):
        qdq = prof.get("qdq_share", 0.0)
        if share is not None and share < 0.5:
            return (f"INT8 not paying: only {share:.0%} of conv MACs run in integer kernels on {result['engine']} "
                    f"({qdq:.0%} of time in Q/DQ ops); {base}")
        if qdq >= 0.15:
            return f"INT8 not paying: {qdq:.0%} of time in Q/DQ ops; {base}"
        if speed is not None and speed < 1.0:
            return f"INT8 not paying: {base}; {top_txt}{_amx_hint(result)}"
        shown = f"{share:.0%}" if share is not None else "an unknown share"
        return (f"INT8 runs: {shown} of conv MACs in integer kernels, {qdq:.0%} of time in Q/DQ ops; {base}"
                + _amx_hint(result))
    if result.get("sparsity", 0) >= 0.3 and result["engine"] != "deepsparse":
        return (f"sparse but not faster on {result['engine']}: its kernels skip no zeros ({result['sparsity']:.0%} "
                f"zero weights); thin channels (structured pruning) or use DeepSparse; {base}")
    return f"{result['engine']} {result.get('precision', '')}: {base}; {top_txt}".strip()


def int8_weight_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of 8-bit initializers (weights stored as INT8 constants, not quantized at run time)."""
    return sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer
               if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(t.dims))


def profile_table(prof: dict, top: int = 8) -> list[str]:
    """Human lines of a profile: 'op share ms'."""
    lines = [f"  {prof.get('source', 'profile')}: {prof.get('ms_per_run', 0):.2f} ms per run"]
    for o in prof.get("ops", [])[:top]:
        lines.append(f"    {o['op']:<24} {o['share']:6.1%} {o['ms']:8.3f} ms")
    return lines
