"""Latency of a YOLO model as a function of its per-group widths, for one engine at the deployment size.

Method: a per-layer profile calibrated against whole-model timings (not one export per group and level). The
dense model is profiled once on the engine (onnxruntime's node profiler, OpenVINO's PERF_COUNT); each profiled node
is attributed to the Ultralytics conv block it came from (ONNX node names keep the module path), and the rest
(concat, split, resize, pooling, Detect decoding, layout reorders) is pooled. A conv's time is scaled by its MAC
ratio (kept inputs x kept outputs), its activation by kept outputs, the pool by the kept share of all conv outputs.
Whole-model latencies of the dense model and of uniformly thinned models (each analysis level) then fit
``measured = a * profile_prediction + c``. Why: measuring one export per group and level (51 groups x 3 levels on
YOLOv8n) costs ~150 exports, and a single group changes latency by 1-3%, below the noise of a shared CPU; a
profile gives every group's share from one run, and the calibration absorbs the profiler's overhead and what the
MAC scaling misses (it is checked against the uniform points, whose residuals analysis.json records).
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparse_core.bench.runner import default_threads
from sparse_core.errors import UserError
from sparse_core.sensitivity.groups import GroupInfo, widths, zero_group
from sparse_core.structured.graph import ChannelGraph
from sparse_core.structured.thin import thin_model

ENGINES = ("onnxruntime", "openvino")


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise UserError(f"--engine: '{engine}' is not supported; expected one of {', '.join(ENGINES)}")
    if engine == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise UserError("--engine openvino: the openvino package is not installed (pip install openvino)") from None


def thinned(model: torch.nn.Module, g: ChannelGraph, groups: list[GroupInfo], sparsity: dict[str, float]):
    """A thinned copy of ``model`` with each group's lowest channels removed at its sparsity."""
    m = copy.deepcopy(model).float().eval()
    by_id = {i.gid: i for i in groups}
    for gid, s in sparsity.items():
        if s > 0:
            zero_group(m, g, by_id[gid], s)
    thin_model(m, check=False)
    return m


def export_onnx(model: torch.nn.Module, imgsz: int, path: Path) -> Path:
    """Plain FP32 ONNX of ``model`` (fused, export-form head) for timing; not a deployment folder."""
    from sparse_core.export.export import prepare_model

    m, im = prepare_model(copy.deepcopy(model), 1, imgsz, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, im, str(path), opset_version=17, input_names=["images"], dynamo=False,
                          do_constant_folding=True)
    return path


def _openvino(path: Path, threads: int, perf: bool = False):
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if perf:
        config["PERF_COUNT"] = "YES"
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    return compiled.create_infer_request()


def measure_rounds(paths: list[Path], engine: str, seconds: float = 3.0, threads: int | None = None) -> list[float]:
    """Median latency (ms) of each model, all loaded at once and timed interleaved in ~0.2 s ABBA blocks
    (``sparse_core.bench.benchmark_many``), ~``seconds`` each: load that drifts on a shared CPU hits every model
    alike. (Rounds of one model for seconds at a time let a few-second disturbance land on one model: once it put
    two OpenVINO plans 27-30% off their earlier and later measurements.)"""
    from sparse_core.bench import benchmark_many

    res = benchmark_many({str(i): p for i, p in enumerate(paths)}, engine=engine, threads=threads,
                         warmup=3, seconds=seconds)
    return [float(res[str(i)]["latency_ms"]["p50"]) for i in range(len(paths))]


def _module_of(node: str, convs: set[str]) -> str | None:
    """The conv an ONNX node belongs to ('/model.22/cv2.0/cv2.0.2/Conv' -> 'model.22.cv2.0.2')."""
    segs = node.strip("/").split("/")
    path, prev, best = segs[0], None, None
    for seg in segs[1:]:
        path += seg[len(prev):] if prev and seg.startswith(prev + ".") else "." + seg
        prev = seg
        for name in (path, path + ".conv"):
            if name in convs:
                best = name
    return best


def _node_times(path: Path, engine: str, imgsz: int, threads: int, runs: int) -> dict[str, float]:
    """Mean ms per ONNX node name over ``runs`` profiled runs."""
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    total: dict[str, float] = {}
    if engine == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        with tempfile.TemporaryDirectory() as tmp:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / "prof")
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            for _ in range(2 + runs):
                sess.run(None, {"images": x})
            events = json.loads(Path(sess.end_profiling()).read_text())
        nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        for e in nodes[-len(nodes) * runs // (2 + runs):]:  # the timed runs, not the warm-up
            key = e["name"][: -len("_kernel_time")]
            total[key] = total.get(key, 0.0) + e["dur"] / 1e3
    else:
        req = _openvino(path, threads, perf=True)
        for _ in range(2):
            req.infer({0: x})
        for _ in range(runs):
            req.infer({0: x})
            for p in req.get_profiling_info():
                total[p.node_name] = total.get(p.node_name, 0.0) + p.real_time.total_seconds() * 1e3
    return {k: v / runs for k, v in total.items()}


def profile(path: Path, engine: str, imgsz: int, convs: set[str], threads: int | None = None,
            runs: int = 3) -> dict[str, Any]:
    """Per-conv ms (conv node + its activation) and the pooled rest, from the engine's node profiler."""
    per: dict[str, float] = {}
    rest = 0.0
    for node, ms in _node_times(path, engine, imgsz, default_threads(threads), runs).items():
        conv = _module_of(node.split("_output_")[0], convs)
        if conv is None:
            rest += ms
        else:
            kind = "act" if "/act/" in node or "Swish" in node else "conv"
            per.setdefault(conv, {"conv": 0.0, "act": 0.0})[kind] += ms
    return {"convs": per, "rest_ms": rest}


def predict_raw(prof: dict[str, Any], struct: dict, segments: dict[str, list[int]],
                sparsity: dict[str, float]) -> float:
    """Profile time (ms) of the model with ``sparsity`` per group, before calibration (see module docstring)."""
    w = widths(struct, segments, sparsity)
    total = 0.0
    for conv, t in prof["convs"].items():
        out_f, in_f = w.get(conv, (1.0, 1.0))
        total += t["conv"] * out_f * in_f + t["act"] * out_f
    sizes = {c: sum(e["out"].values()) for c, e in struct.items()}
    kept = sum(w[c][0] * n for c, n in sizes.items())
    return total + prof["rest_ms"] * kept / max(sum(sizes.values()), 1)


def calibrate(raw: list[float], measured: list[float]) -> tuple[float, float]:
    """Least-squares ``measured = a * raw + c`` (c = 0 when the fit would make it negative)."""
    x, y = np.asarray(raw), np.asarray(measured)
    if len(x) >= 2 and np.ptp(x) > 0:
        a, c = np.polyfit(x, y, 1)
        if a > 0 and c >= 0:
            return float(a), float(c)
    return float((x @ y) / max(x @ x, 1e-12)), 0.0


def predict(lat: dict[str, Any], struct: dict, segments: dict[str, list[int]], sparsity: dict[str, float]) -> float:
    """Calibrated latency (ms) from one engine's entry of analysis.json."""
    return lat["a"] * predict_raw(lat["profile"], struct, segments, sparsity) + lat["c"]


def fit(model: torch.nn.Module, g: ChannelGraph, groups: list[GroupInfo], struct: dict, engine: str, imgsz: int,
        levels: list[float], workdir: Path, seconds: float = 3.0, threads: int | None = None, log=print) -> dict:
    """Profile the dense model on ``engine``, time it and its uniformly thinned versions, and calibrate."""
    convs = set(struct)
    segments = {i.gid: [len(s) for s in i.group.segments] for i in groups}
    dense = export_onnx(model, imgsz, workdir / "dense.onnx")
    prof = profile(dense, engine, imgsz, convs, threads)
    points, paths = [], []
    for level in [0.0] + list(levels):
        sparsity = {i.gid: level for i in groups}
        paths.append(dense if level == 0 else export_onnx(thinned(model, g, groups, sparsity), imgsz,
                                                          workdir / f"uniform{level:g}.onnx"))
        points.append({"level": level, "raw_ms": predict_raw(prof, struct, segments, sparsity)})
    for p, ms in zip(points, measure_rounds(paths, engine, seconds, threads)):
        p["measured_ms"] = ms
        log(f"analyze: latency {engine} {imgsz}px uniform {p['level']:g}: {ms:.1f} ms")
    a, c = calibrate([p["raw_ms"] for p in points], [p["measured_ms"] for p in points])
    for p in points:
        p["predicted_ms"] = a * p["raw_ms"] + c
        p["error"] = p["predicted_ms"] / p["measured_ms"] - 1
    return {"method": "per-layer profile calibrated on whole-model timings (dense + uniform levels)",
            "engine": engine, "imgsz": imgsz, "threads": default_threads(threads), "a": a, "c": c, "profile": prof,
            "calibration": points, "dense_ms": points[0]["measured_ms"]}
