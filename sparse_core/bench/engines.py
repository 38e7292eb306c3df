"""One loaded model per inference engine: a zero-argument ``run`` for the timing loop, the engine's version, the
precision it really computes in, and a per-op-type profile (why a model is, or is not, fast on that engine).

- onnxruntime: sequential, all graph optimisations; ``spinning=False`` when several sessions share the cores (an
  idle session's pool would otherwise spin on the cores the measured session needs).
- OpenVINO: ``PERFORMANCE_HINT=LATENCY`` (one stream), ``INFERENCE_NUM_THREADS``; its *default* precision on a CPU
  with AVX512_BF16/AMX is bf16, so the precision the compiled model reports is returned, never assumed.
- DeepSparse lives in its own venv (numpy<2): see ``sparse_core.bench.deepsparse_venv``; OpenVINO with oneDNN's
  ISA capped runs in a worker too: see ``openvino_isa``.
"""

from __future__ import annotations

import collections
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sparse_core.errors import UserError

PRECISIONS = ("f32", "bf16", "f16")
INT8_ELTWISE = "Subgraph (int8: FakeQuantize + eltwise)"
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", INT8_ELTWISE})


@dataclass
class Loaded:
    """A model compiled by one engine: ``run`` runs one batch on the fixed input."""

    run: Callable[[], Any]
    version: str
    precision: str
    profile: Callable[[int], dict] = field(default=lambda n: {})
    extra: dict = field(default_factory=dict)
    close: Callable[[], None] = field(default=lambda: None)


def _fail(engine: str, path: Path, err: Exception) -> UserError:
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    return UserError(f"{path}: {engine} cannot run this model ({type(err).__name__}: {first})")


def _ort_options(threads: int, spinning: bool, profile_prefix: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return opts


def onnxruntime(path: Path, x: np.ndarray, threads: int, spinning: bool = True) -> Loaded:
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), _ort_options(threads, spinning), providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        sess.run(None, feed)  # a model that loads but cannot run this input fails here, not mid-benchmark
    except Exception as err:
        raise _fail("onnxruntime", path, err) from None
    return Loaded(lambda: sess.run(None, feed), ort.__version__, "f32 (int8 where QDQ fuses)",
                  profile=lambda n: ort_profile(path, x, threads, n))


def ort_profile(path: Path, x: np.ndarray, threads: int, iterations: int = 20) -> dict:
    """onnxruntime's profiler: kernel time per op type (the optimised graph's ops: QLinearConv, FusedConv...)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="sparsepipe-prof-") as tmp:
        opts = _ort_options(threads, False, profile_prefix=str(Path(tmp) / "ort"))
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        sess.run(None, feed)
        sess.end_profiling()  # drop the first (allocating) run from the profile
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(iterations):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    times: dict[str, float] = collections.defaultdict(float)
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            times[ev.get("args", {}).get("op_name", "?")] += ev["dur"] / 1e3 / iterations
    return summarise_ops(times, "onnxruntime profiler")


def _ov_config(threads: int, precision: str | None, perf_count: bool = False) -> dict:
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if precision:
        cfg["INFERENCE_PRECISION_HINT"] = precision
    if perf_count:
        cfg["PERF_COUNT"] = True
    return cfg


def ov_precision(compiled) -> str:
    """The precision a compiled OpenVINO model runs its float ops in (``bf16`` by default on AVX512_BF16/AMX)."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return value.to_string() if hasattr(value, "to_string") else str(value)


def _ov_compile(core, path: Path, config: dict):
    """``core.compile_model`` of the ONNX file; where that fails, of ``openvino.convert_model(path)`` (what
    Ultralytics' OpenVINO export and our ``val --engine openvino`` compile). Why: OpenVINO 2026.4 on an AMX CPU at
    its bf16 default compiles NNCF's QDQ YOLOv8 (the baseline) only from the converted model ("No suitable
    implementations" for the int8 conv after a C2f Split and for SPPF's int8 MaxPool when read directly).
    Returns (compiled model, None or a note saying the converted model ran)."""
    import openvino as ov

    try:
        return core.compile_model(str(path), "CPU", config), None
    except Exception as err:
        try:
            return core.compile_model(ov.convert_model(str(path)), "CPU", config), (
                f"compiled from openvino.convert_model (reading the ONNX file directly failed: "
                f"{str(err).strip().splitlines()[-1][:120] if str(err).strip() else type(err).__name__})")
        except Exception:
            raise err from None


def openvino(path: Path, x: np.ndarray, threads: int, precision: str | None = None) -> Loaded:
    """OpenVINO CPU, LATENCY hint; ``precision`` None keeps OpenVINO's default (reported as it resolved). With
    oneDNN's instruction set capped (e.g. AVX512_CORE_VNNI) a model needs a process of its own: ``openvino_isa``."""
    try:
        import openvino as ov
    except ImportError as err:
        raise UserError(f"--engine openvino: OpenVINO is not importable ({err}); expected `pip install openvino`") from None
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"--precision: {precision!r} is not supported; expected one of {', '.join(PRECISIONS)}")
    core = ov.Core()
    try:
        compiled, note = _ov_compile(core, path, _ov_config(threads, precision))
        request = compiled.create_infer_request()
        request.infer({0: x})
    except Exception as err:
        raise _fail("OpenVINO", path, err) from None
    return Loaded(lambda: request.infer({0: x}), ov.__version__, ov_precision(compiled),
                  profile=lambda n: ov_profile(path, x, threads, precision, n), extra={"openvino_note": note} if note else {})


def ov_profile(path: Path, x: np.ndarray, threads: int, precision: str | None, iterations: int = 20) -> dict:
    """OpenVINO performance counters: time per executed layer type, and which convs ran integer kernels."""
    import openvino as ov

    compiled, _ = _ov_compile(ov.Core(), path, _ov_config(threads, precision, perf_count=True))
    request = compiled.create_infer_request()
    request.infer({0: x})
    times: dict[str, float] = collections.defaultdict(float)
    conv_kernels: dict[str, str] = {}
    for _ in range(iterations):
        request.infer({0: x})
        for p in request.profiling_info:
            if p.status != p.Status.EXECUTED:
                continue
            kind = p.node_type
            if kind == "Subgraph" and p.exec_type.upper().endswith(("_I8", "_U8")):
                kind = INT8_ELTWISE  # OpenVINO fuses FakeQuantize with the eltwise ops around it into Subgraphs
            times[kind] += p.real_time.total_seconds() * 1e3 / iterations
            if p.node_type == "Convolution":  # named after the ONNX Conv node, bias split off
                conv_kernels[p.node_name.removesuffix("/WithoutBiases")] = p.exec_type
    out = summarise_ops(times, "OpenVINO performance counters")
    out["conv_kernels"] = conv_kernels
    return out


def summarise_ops(times: dict[str, float], source: str) -> dict:
    total = sum(times.values()) or 1e-9
    ops = [{"op": op, "ms": round(ms, 4), "share": round(ms / total, 4)}
           for op, ms in sorted(times.items(), key=lambda kv: -kv[1])]
    qdq = sum(o["share"] for o in ops if o["op"] in QDQ_OPS or o["op"] in ("FakeQuantize", "Quantize", "Dequantize"))
    return {"source": source, "ms_per_run": round(total, 3), "ops": ops, "qdq_share": round(qdq, 4)}
