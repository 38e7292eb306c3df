"""Latency/throughput of an exported model, optionally against a second model run interleaved in the same process.

Interleaving is what makes ``speedup`` trustworthy on a shared or throttling machine: both models see the same
noise, so the ratio holds even when absolute figures drift. Models alternate in blocks of about ``BLOCK_S`` (ABBA
order), each block starting with one untimed run: alternating every single run measured the smaller model with
caches just flushed by the larger one (yolov8n vs yolov8s at 320 px: 2.4x interleaved per run vs ~3x alone). Sizes and sparsity come from the file, so
a benchmark row is self-contained.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sparse_core.bench import engines, openvino_isa, why
from sparse_core.bench.cpu import cpu_info
from sparse_core.errors import UserError
from sparse_core.export import graph
from sparse_core.export.graph import deployment_model
from sparse_core.export.layout import read_decision

ENGINES = ("onnxruntime", "openvino", "deepsparse")
DEFAULT_SECONDS = 10.0
DEFAULT_IMGSZ = 640
BLOCK_S, MAX_BLOCK_RUNS = 0.2, 100  # --compare alternates blocks of ~0.2 s per model


@dataclass
class _Model:
    """One model under test: its file facts, its input, and a zero-argument callable running one batch."""

    path: Path
    input_shape: list[int]
    facts: dict[str, Any]
    dtype: str = "float32"
    block: int = 1
    run: Callable[[], Any] = lambda: None
    engine_version: str = ""
    precision: str = ""
    loaded: Any = None
    latencies: list[float] = field(default_factory=list)


def _input_shape(path: Path, proto, batch: int | None, imgsz: int | None) -> tuple[list[int], str]:
    """Input shape to feed: static dims must match --batch/--imgsz; symbolic dims take them (or defaults)."""
    sig = graph.io_signature(proto)["inputs"]
    if len(sig) != 1 or len(sig[0]["shape"]) != 4:
        raise UserError(f"{path}: expected one image input (N, C, H, W); found {[(i['name'], i['shape']) for i in sig]}")
    (n, c, h, w), dtype = sig[0]["shape"], sig[0]["dtype"]
    if batch is not None and isinstance(n, int) and n != batch:
        raise UserError(f"--batch: {batch} does not match {path} (static input shape {sig[0]['shape']}); expected {n}")
    if imgsz is not None and isinstance(h, int) and isinstance(w, int) and (h, w) != (imgsz, imgsz):
        raise UserError(f"--imgsz: {imgsz} does not match {path} (static input shape {sig[0]['shape']}); expected {h}")
    shape = [
        n if isinstance(n, int) else (batch or 1),
        c if isinstance(c, int) else 3,
        h if isinstance(h, int) else (imgsz or DEFAULT_IMGSZ),
        w if isinstance(w, int) else (imgsz or DEFAULT_IMGSZ),
    ]
    return shape, dtype


def _facts(path: Path, proto) -> dict[str, Any]:
    sizes = graph.file_sizes(path)
    stats = graph.weight_stats(proto)
    ops = graph.node_histogram(proto)
    return {
        "size_bytes": sizes["size_bytes"],
        "size_gzip_bytes": sizes["size_gzip_bytes"],
        "size_mb": round(sizes["size_bytes"] / 1e6, 4),
        "size_gzip_mb": round(sizes["size_gzip_bytes"] / 1e6, 4),
        "sparsity": stats["sparsity"],
        "quantized": any(k in ops for k in ("QuantizeLinear", "DequantizeLinear")) or any(k in graph.INTEGER_OPS for k in ops),
    }


def _load(m: _Model, x: np.ndarray, engine: str, threads: int, precision: str | None, shared: bool,
          isa: str | None = None) -> None:
    """Compile ``m`` on ``engine`` (see ``engines``); ``shared``: other sessions share the cores (no spinning)."""
    if engine == "onnxruntime":
        loaded = engines.onnxruntime(m.path, x, threads, spinning=not shared)
    elif engine == "openvino":
        loaded = openvino_isa.load(m.path, x, threads, precision, isa) if isa else engines.openvino(
            m.path, x, threads, precision)
    else:
        from sparse_core.bench import deepsparse_venv as deepsparse

        loaded = deepsparse.load(m.path, x, threads)
    m.run, m.engine_version, m.precision, m.loaded = loaded.run, loaded.version, loaded.precision, loaded


def default_threads(threads: int | None) -> int:
    """``threads``, or the CPUs this process may use."""
    return threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _model_under_test(p: str | os.PathLike, engine: str, batch: int | None, imgsz: int | None) -> _Model:
    """A model file (or deployment folder) read for timing: its input shape and file facts, not yet compiled."""
    path = deployment_model(p, engine)  # a QDQ export's form for this engine when it has one
    proto = graph.load_onnx(path)
    shape, dtype = _input_shape(path, proto, batch, imgsz)
    return _Model(path, shape, _facts(path, proto), dtype)


def _check_args(engine, batch, imgsz, threads, warmup, iterations, seconds, precision=None, isa=None) -> None:
    if engine not in ENGINES:
        raise UserError(f"--engine: {engine!r} is not supported; expected one of {', '.join(ENGINES)}")
    if isa is not None:
        if engine != "openvino":
            raise UserError(f"--isa: {isa!r} is for --engine openvino (oneDNN's ISA cap); got --engine {engine}")
        openvino_isa.check(isa)
    if precision is not None and (engine != "openvino" or precision not in engines.PRECISIONS):
        raise UserError(f"--precision: {precision!r} is invalid for --engine {engine}; expected one of "
                        f"{', '.join(engines.PRECISIONS)} with --engine openvino (onnxruntime computes in f32)")
    for name, value in (("--batch", batch), ("--imgsz", imgsz), ("--threads", threads)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"{name}: {value} is invalid; expected an integer >= 1")
    if not isinstance(warmup, int) or warmup < 0:
        raise UserError(f"--warmup: {warmup} is invalid; expected an integer >= 0")
    if iterations is not None and seconds is not None:
        raise UserError("--iterations and --seconds: both given; expected one of them")
    if iterations is not None and (not isinstance(iterations, int) or iterations < 1):
        raise UserError(f"--iterations: {iterations} is invalid; expected an integer >= 1")
    if seconds is not None and not seconds > 0:
        raise UserError(f"--seconds: {seconds} is invalid; expected a number > 0")


def _summary(m: _Model) -> dict[str, Any]:
    lat = np.asarray(m.latencies) * 1e3
    batch = m.input_shape[0]
    return {
        "model": str(m.path),
        "input_shape": m.input_shape,
        "iterations": len(lat),
        "images_per_s": round(batch * len(lat) / (lat.sum() / 1e3), 3),
        "latency_ms": {
            "mean": round(float(lat.mean()), 4),
            "p50": round(float(np.percentile(lat, 50)), 4),
            "p90": round(float(np.percentile(lat, 90)), 4),
            "p99": round(float(np.percentile(lat, 99)), 4),
            "min": round(float(lat.min()), 4),
            "max": round(float(lat.max()), 4),
        },
        **m.facts,
    }


def _time(models: list[_Model], warmup: int, iterations: int | None, seconds: float | None) -> float:
    """Untimed warm-up, then timed ABBA blocks; returns the wall time of the timed part."""
    for _ in range(warmup):
        for m in models:
            m.run()
    for m in models:  # one timed probe sizes the blocks
        t0 = time.perf_counter()
        m.run()
        m.block = max(1, min(MAX_BLOCK_RUNS, round(BLOCK_S / max(time.perf_counter() - t0, 1e-6))))
    start, b = time.perf_counter(), 0
    while True:
        for m in models if b % 2 == 0 else models[::-1]:  # ABBA order of blocks: neither model always runs first
            if len(models) > 1:
                m.run()  # untimed: the other model just evicted this one's weights from the caches
            for _ in range(m.block):
                if iterations is not None and len(m.latencies) >= iterations:
                    break
                t0 = time.perf_counter()
                m.run()
                m.latencies.append(time.perf_counter() - t0)
        b += 1
        if iterations is not None and all(len(m.latencies) >= iterations for m in models):
            break
        if seconds is not None and time.perf_counter() - start >= seconds:
            break
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], Any]], warmup: int, seconds: float) -> dict[str, list[float]]:
    """Latencies (s) of several already loaded models timed in one process by the rules of ``benchmark``:
    untimed warm-up per model, ABBA blocks of ~``BLOCK_S`` each starting with an untimed run."""
    models = [_Model(Path(name), [], {}, run=run) for name, run in runs.items()]
    _time(models, warmup, None, seconds)
    return {name: m.latencies for name, m in zip(runs, models)}


def _notes(m: _Model) -> dict[str, Any]:
    """How the engine had to load the model, when that was not the plain way (e.g. ``openvino_note``)."""
    extra = m.loaded.extra if m.loaded is not None else {}
    return {k: v for k, v in extra.items() if k.endswith("_note") and v}


def _explain(m: _Model, engine: str, profile_runs: int) -> dict[str, Any]:
    """Per-op-type time and the share of conv MACs the engine ran in integer kernels (see ``why``)."""
    if engine == "deepsparse" or profile_runs <= 0:
        return dict(m.loaded.extra) if m.loaded is not None else {}
    prof = m.loaded.profile(profile_runs)
    macs = why.conv_macs(graph.load_onnx(m.path))
    if engine == "openvino":
        share = why.ov_integer_share(prof.pop("conv_kernels", {}), macs)
    else:
        share = why.ort_integer_share(m.path, macs)
    return {"profile": prof, "integer_conv_mac_share": share["integer_conv_mac_share"], "integer_kernels": share}


def _chosen_isa(model: str | os.PathLike, engine: str) -> str | None:
    """The oneDNN cap a chosen deployment was measured fastest under on ``engine`` (its deployment.json)."""
    if not Path(model).exists():
        return None
    decision = read_decision(model)
    return decision.get("isa_cap") if decision and decision.get("engine") == engine else None


def benchmark(
    model: str | os.PathLike,
    engine: str = "onnxruntime",
    batch: int | None = None,
    imgsz: int | None = None,
    threads: int | None = None,
    warmup: int = 10,
    iterations: int | None = None,
    seconds: float | None = None,
    compare: str | os.PathLike | None = None,
    precision: str | None = None,
    profile_runs: int = 10,
    isa: str | None = None,
) -> dict[str, Any]:
    """Benchmark ``model`` (.onnx or deployment folder); with ``compare`` (the dense baseline), both interleaved,
    plus their ratios, each with its profile and a verdict line saying why it is (not) fast.

    ``batch``/``imgsz`` default to the model's static input shape (1 / 640 for symbolic dims); ``threads`` to the
    CPUs this process may use; neither ``iterations`` nor ``seconds`` means ``DEFAULT_SECONDS`` of measurement.
    ``precision`` (OpenVINO only): f32/bf16/f16; None keeps the engine's default, reported as it resolved.
    ``profile_runs``: runs under the engine's profiler after timing (0: no profile). ``isa`` (OpenVINO only): cap
    oneDNN's instruction set for both models, e.g. AVX512_CORE_VNNI where AMX INT8 kernels are slow (``openvino_isa``).
    """
    _check_args(engine, batch, imgsz, threads, warmup, iterations, seconds, precision, isa)
    threads = default_threads(threads)
    isa = isa or _chosen_isa(model, engine)
    if iterations is None and seconds is None:
        seconds = DEFAULT_SECONDS
    models = [_model_under_test(p, engine, batch, imgsz) for p in [model] + ([compare] if compare is not None else [])]
    if len(models) == 2 and models[0].input_shape != models[1].input_shape:
        raise UserError(f"--compare: {models[1].path} input shape {models[1].input_shape} differs from "
                        f"{models[0].path} {models[0].input_shape}; expected both exported at the same --imgsz/--batch")
    x = np.random.default_rng(0).random(models[0].input_shape, dtype=np.float32)  # content does not change speed
    try:
        for m in models:
            _load(m, x.astype(m.dtype), engine, threads, precision, shared=len(models) > 1, isa=isa)
        wall = _time(models, warmup, iterations, seconds)
        summaries = [{**_summary(m), "engine": engine, "engine_version": m.engine_version, "precision": m.precision,
                      **_notes(m), **_explain(m, engine, profile_runs)} for m in models]
    finally:  # worker processes (DeepSparse, a capped OpenVINO) end here, not at interpreter exit
        for m in models:
            if m.loaded is not None:
                m.loaded.close()
    result = {
        **summaries[0],
        "batch": models[0].input_shape[0],
        "imgsz": models[0].input_shape[2],
        "threads": threads,
        "isa_cap": isa and isa.upper(),
        "warmup": warmup,
        "wall_s": round(wall, 3),
        "cpu": cpu_info(),
    }
    if len(models) == 2:
        other = summaries[1]
        other["verdict"] = why.verdict(other)
        result["compare"] = other
        result["interleaved"] = {"order": "ABBA blocks", "block_runs": [m.block for m in models],
                                 "untimed_first_run_per_block": True}
        result["speedup"] = round(result["images_per_s"] / other["images_per_s"], 4)
        result["speedup_p50"] = round(other["latency_ms"]["p50"] / result["latency_ms"]["p50"], 4)  # robust to spikes
        result["size_ratio_gzip"] = round(other["size_gzip_bytes"] / result["size_gzip_bytes"], 4)
    result["verdict"] = why.verdict(result)
    return result


def benchmark_many(models: dict[str, str | os.PathLike], engine: str = "onnxruntime", threads: int | None = None,
                   warmup: int = 5, seconds: float = DEFAULT_SECONDS, precision: str | None = None,
                   isa: str | None = None, isas: dict[str, str] | None = None) -> dict[str, dict]:
    """Several models (.onnx or deployment folders, same input shape) loaded together and timed interleaved by
    ``benchmark``'s rules, ``seconds`` each: load drift on a shared CPU then hits every model alike, so ratios
    between them hold (timing them one after another gave +-25% between runs of the frontier). One summary each.
    ``isas`` (OpenVINO): a oneDNN cap per model name, over ``isa`` (the deployment choice times a model with and
    without the cap side by side)."""
    _check_args(engine, None, None, threads, warmup, None, seconds, precision, isa)
    for cap in (isas or {}).values():
        _check_args(engine, None, None, threads, warmup, None, seconds, precision, cap)
    isas = {name: (isas or {}).get(name) or isa for name in models}
    threads = default_threads(threads)
    loaded = {name: _model_under_test(p, engine, None, None) for name, p in models.items()}
    shapes = {tuple(m.input_shape) for m in loaded.values()}
    if len(shapes) > 1:
        raise UserError(f"models: input shapes differ ({sorted(shapes)}); expected all exported at the same size")
    x = np.random.default_rng(0).random(next(iter(loaded.values())).input_shape, dtype=np.float32)
    try:
        for name, m in loaded.items():
            _load(m, x.astype(m.dtype), engine, threads, precision, shared=True, isa=isas[name])
        _time(list(loaded.values()), warmup, None, seconds * len(loaded))
    finally:
        for m in loaded.values():
            if m.loaded is not None:
                m.loaded.close()
    return {name: {**_summary(m), "engine": engine, "engine_version": m.engine_version, "precision": m.precision,
                   "native_share": m.loaded.extra.get("native_share"), "threads": threads,
                   "isa_cap": isas[name] and isas[name].upper(), **_notes(m)}
            for name, m in loaded.items()}
