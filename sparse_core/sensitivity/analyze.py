"""``sparsepipe analyze``: per coupled channel group, what removing channels costs in accuracy and saves in latency.

Accuracy (``accuracy``): one-shot removal of each group's lowest-magnitude channels at each level, BN statistics
recalibrated, val loss and mAP50-95 on a small subset. Latency (``latency``): a per-layer engine profile calibrated
on whole-model timings, which predicts any mix of per-group widths. ``analysis.json`` holds both plus the model's
channel structure, so ``recipe generate`` needs nothing else.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from sparse_core.atomic import atomic_dir
from sparse_core.errors import UserError
from sparse_core.sensitivity import latency as lat
from sparse_core.sensitivity.accuracy import build_subsets, removal_score
from sparse_core.sensitivity.groups import model_groups, structure, zero_group

VERSION = 1


def parse_engines(text: str) -> tuple[str, ...]:
    """``--engine``'s comma-separated latency engines, each checked (an empty text is checked as one engine)."""
    engines = tuple(e.strip() for e in text.split(",") if e.strip())
    for e in engines or ("",):
        lat.check_engine(e)
    return engines


def parse_levels(text: str) -> list[float]:
    try:
        levels = sorted({float(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--levels: '{text}' is not a comma-separated list of numbers; expected e.g. "
                        "0.25,0.5,0.75") from None
    if not levels or any(not 0 < x < 1 for x in levels):
        raise UserError(f"--levels: '{text}': expected fractions of channels to remove, each in (0, 1)")
    return levels


def _accuracy(model, g, groups, subsets, levels, log) -> tuple[dict, dict]:
    """Dense reference and {gid: {level: metrics}}; levels keeping as many channels as a smaller one reuse it."""
    t0 = time.perf_counter()
    dense = removal_score(model, subsets, lambda m: None)
    log(f"analyze: dense (BN recalibrated) mAP50-95 {dense['map50_95']:.4f} val loss {dense['val_loss']:.4f}")
    todo = sum(len({i.kept_units(lv) for lv in levels} - {i.kept_units(0)}) for i in groups)
    out, done = {}, 0
    for info in groups:
        seen: dict[int, dict] = {info.kept_units(0.0): dense}
        out[info.gid] = {}
        for level in levels:
            kept = info.kept_units(level)
            if kept not in seen:
                seen[kept] = removal_score(model, subsets, lambda m: zero_group(m, g, info, level))
                done += 1
                el = time.perf_counter() - t0
                log(f"analyze: accuracy {done}/{todo} {info.gid} -{level:g}: mAP50-95 {seen[kept]['map50_95']:.4f} "
                    f"[{el:.0f}s, ~{el / done * (todo - done):.0f}s left]")
            r = seen[kept]
            out[info.gid][f"{level:g}"] = {**r, "kept_units": kept,
                                           "map_drop": dense["map50_95"] - r["map50_95"],
                                           "loss_increase": r["val_loss"] - dense["val_loss"]}
    return dense, out


def analyze(model_path: str, data: str, out: str, engines: tuple[str, ...] = ("onnxruntime",), imgsz: int = 640,
            levels: list[float] = (0.25, 0.5, 0.75), acc_imgsz: int | None = None, val_images: int = 16,
            calib_images: int = 8, batch: int = 8, seconds: float = 3.0, threads: int | None = None,
            tracking_uri: str | None = None, experiment: str = "sparsepipe", log=print) -> dict[str, Any]:
    """Write ``out/analysis.json`` and plots; returns the analysis. See the module docstring."""
    from sparse_core.checkpoint import checkpoint_model, load_checkpoint
    from sparse_core.tracking.lineage import file_sha256

    for engine in engines:
        lat.check_engine(engine)
    levels = list(levels)
    ckpt = load_checkpoint(model_path)
    model = copy.deepcopy(checkpoint_model(ckpt)).float().eval()
    if not hasattr(model, "stride"):
        raise UserError(f"{model_path}: not an Ultralytics YOLO model (no stride); expected a detector/segmenter .pt")
    train_args = ckpt.get("train_args") if isinstance(ckpt.get("train_args"), dict) else {}
    acc_imgsz = acc_imgsz or int(train_args.get("imgsz") or imgsz)
    t0 = time.perf_counter()
    g, groups = model_groups(model)
    struct = structure(g, groups)
    subsets = build_subsets(model, data, acc_imgsz, val_images, calib_images, batch)
    log(f"analyze: {len(groups)} channel groups, levels {levels}, accuracy at {acc_imgsz}px on "
        f"{len(subsets.val.dataset)} val / {len(subsets.calib.dataset)} calibration images, latency on "
        f"{'/'.join(engines)} at {imgsz}px")
    dense, acc = _accuracy(model, g, groups, subsets, levels, log)
    t_acc = time.perf_counter() - t0
    latency = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            latency[engine] = lat.fit(model, g, groups, struct, engine, imgsz, levels, Path(tmp), seconds, threads,
                                      log)
    segments = {i.gid: [len(s) for s in i.group.segments] for i in groups}
    rows = []
    for info in groups:
        saving = {e: {f"{lv:g}": m["dense_ms"] - lat.predict(m, struct, segments, {info.gid: lv}) for lv in levels}
                  for e, m in latency.items()}
        rows.append({"id": info.gid, "convs": info.convs, "units": info.units, "segments": segments[info.gid],
                     "accuracy": acc[info.gid], "latency_saving_ms": saving})
    result = {"version": VERSION, "model": str(model_path), "model_sha256": file_sha256(model_path),
              "data": str(data), "levels": levels, "imgsz": imgsz, "accuracy_imgsz": acc_imgsz,
              "subset": {"val_images": len(subsets.val.dataset), "calib_images": len(subsets.calib.dataset)},
              "dense": dense, "groups": rows, "structure": struct, "latency": latency,
              "head_inputs": [f"model.{i}" for i in model.model[-1].f],  # layers the Detect head reads (KD)
              "timing": {"accuracy_s": round(t_acc, 1), "total_s": round(time.perf_counter() - t0, 1),
                         "loadavg_1m": os.getloadavg()[0], "cpus": len(os.sched_getaffinity(0))}}
    _write(result, out, tracking_uri, experiment)
    log(f"analyze: done in {result['timing']['total_s']:.0f}s -> {out}/analysis.json")
    return result


def _write(result: dict, out: str, tracking_uri: str | None, experiment: str) -> None:
    from sparse_core.sensitivity.plots import plot_latency_share, plot_sensitivity
    from sparse_core.tracking.connection import resolve_uri
    from sparse_core.tracking.tracker import Tracker

    with atomic_dir(out, replace_if=lambda p: (p / "analysis.json").exists()) as tmp:
        (tmp / "analysis.json").write_text(json.dumps(result, indent=1) + "\n")
        plot_sensitivity(result, tmp / "sensitivity.png")
        plot_latency_share(result, tmp / "latency_share.png")
    uri = resolve_uri(tracking_uri)
    if uri:
        tracker = Tracker.start(uri, experiment=experiment, run_name="analyze")
        tracker.log_params({"analyze.model": result["model"], "analyze.levels": result["levels"],
                            "analyze.imgsz": result["imgsz"], "analyze.engines": list(result["latency"])})
        tracker.log_metrics({"analyze.dense_map50_95": result["dense"]["map50_95"],
                             "analyze.total_s": result["timing"]["total_s"]})
        for name in ("analysis.json", "sensitivity.png", "latency_share.png"):
            tracker.log_artifact(Path(out) / name, "analysis")
        tracker.finish()
        result["mlflow_run_id"] = tracker.run_id
