"""`make bench`: dense, pruned, structured-pruned and pruned-quantized YOLOv8n, from nothing, on one CPU.

1. generate a detection data set (``synth_dataset``: coloured shapes, ``--imgsz`` px);
2. train a dense YOLOv8n from ``yolov8n.yaml`` (random init, nothing downloaded);
3. from the dense ``best.pt``: unstructured GMP (``recipes/gmp_prune.yaml``), structured GMP
   (``recipes/structured_prune.yaml``: whole channels, thinned after training), and from the structured model
   INT8 QAT (``QuantizationModifier``) — the pruned-quantized (PQ) variant;
4. export each to ONNX (``sparse_core.export``), measure mAP50 of each .onnx with onnxruntime (Ultralytics'
   validator), and time all four in ONE process, batch 1, same threads, interleaved round-robin (order reversed
   every round) so machine noise hits all alike; profile the PQ and dense graphs with onnxruntime's profiler;
5. write ``benchmarks/results/speed.md`` (table + machine + profile), ``speed.png`` (mAP50 vs img/s, marker
   area ~ MB) and ``speed.json`` (every number).

Stages already done in ``--work`` are reused with ``--reuse`` (for iterating on the report).

    .venv/bin/python benchmarks/speed.py [--imgsz 160] [--threads 2] [--seconds 60] [--reuse]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

VARIANTS = ("dense", "pruned", "structured", "pq")
LABELS = {
    "dense": "dense FP32",
    "pruned": "pruned (unstructured GMP) FP32",
    "structured": "structured-pruned (thinned) FP32",
    "pq": "pruned-quantized (structured + INT8 QAT)",
}
QAT_RECIPE = """# INT8 QAT of the thinned structured model: observers frozen for the last epoch, BN statistics too.
# (QAT starts at 0.1: with start_epoch 0 the EMA keeps 1-element fake-quant scales and its update fails.)
version: 1.1.0
num_epochs: {epochs}
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
    lr_func: cosine
    init_lr: {lr}
    final_lr: {final_lr}
quantization_modifiers:
  - !QuantizationModifier
    start_epoch: 0.1
    disable_quantization_observer_epoch: {freeze}
    freeze_bn_stats_epoch: {freeze}
    ignore: ['Upsample', 'Concat', 'model.22.dfl.conv']
"""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- training


def train_stage(name: str, args, work: Path, data: Path, **kw) -> tuple[Path, float]:
    """Train one variant (or reuse it); returns (last.pt, seconds).

    last.pt is the model at the recipe's end: Ultralytics' best.pt is chosen by validation fitness alone and can
    predate the final sparsity (epoch 1 of a GMP run scored best in a trial run)."""
    from sparse_core.integrations.ultralytics import train

    last = work / "runs" / name / "weights" / "last.pt"
    if args.reuse and last.exists():
        log(f"{name}: reusing {last}")
        return last, 0.0
    log(f"{name}: training ({kw.get('epochs') or 'recipe'} epochs)")
    t0 = time.time()
    summary = train(data=str(data), imgsz=args.imgsz, batch=args.batch, workers=args.workers,
                    project=work / "runs", name=name, plots=False, seed=0, **kw)
    seconds = time.time() - t0
    log(f"{name}: done in {seconds:.0f} s, mAP50 (PyTorch, val) {summary['map50']:.4f}")
    return Path(summary["weights"]["last"]), seconds


def build_variants(args, work: Path) -> tuple[dict[str, Path], dict[str, float], Path]:
    from sparse_core.data.synth import synth_dataset
    from sparse_core.recipes import path as recipe_path

    data = work / "data" / "data.yaml"
    if not (args.reuse and data.exists()):
        log(f"data: {args.n_train} train / {args.n_val} val images, {args.imgsz} px, {args.classes} classes")
        data = synth_dataset(work / "data", task="detect", n_train=args.n_train, n_val=args.n_val, imgsz=args.imgsz,
                             seed=0, n_classes=args.classes)
    ckpts, seconds = {}, {}
    ckpts["dense"], seconds["dense"] = train_stage("dense", args, work, data, model="yolov8n.yaml",
                                                   epochs=args.dense_epochs)
    e = args.prune_epochs
    ckpts["pruned"], seconds["pruned"] = train_stage(
        "pruned", args, work, data, model=str(ckpts["dense"]), recipe=str(recipe_path("gmp_prune.yaml")),
        recipe_args={"num_epochs": e, "pruning_end_epoch": round(e * 0.6), "init_sparsity": 0.05,
                     "final_sparsity": args.sparsity})
    ckpts["structured"], seconds["structured"] = train_stage(
        "structured", args, work, data, model=str(ckpts["dense"]), recipe=str(recipe_path("structured_prune.yaml")),
        recipe_args={"num_epochs": e, "pruning_end_epoch": round(e * 0.6),
                     "final_sparsity": args.channel_sparsity})
    qat = work / "qat.yaml"
    q = max(args.qat_epochs, 2)  # observers must see at least one epoch before they freeze
    write_atomic(qat, QAT_RECIPE.format(epochs=q, lr=args.qat_lr, final_lr=args.qat_lr / 100, freeze=q - 1))
    ckpts["pq"], seconds["pq"] = train_stage("pq", args, work, data, model=str(ckpts["structured"]), recipe=str(qat))
    return ckpts, seconds, data


# ---------------------------------------------------------------------------------------------------- measuring


def session(path: Path, threads: int, profile_prefix: str | None = None):
    """onnxruntime CPU session the way ``sparsepipe benchmark`` makes it (sequential, all graph optimisations)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def interleaved(paths: dict[str, Path], imgsz: int, threads: int, seconds: float, warmup: int) -> dict[str, dict]:
    """All models in one process on the same input; each round runs every model once, order reversed each round."""
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    runs = {}
    for name, p in paths.items():
        sess = session(p, threads)
        feed = {sess.get_inputs()[0].name: x}
        runs[name] = (sess, feed)
    for _ in range(warmup):
        for sess, feed in runs.values():
            sess.run(None, feed)
    lat: dict[str, list[float]] = {n: [] for n in runs}
    order, start, rounds = list(runs), time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for name in order if rounds % 2 == 0 else order[::-1]:
            sess, feed = runs[name]
            t0 = time.perf_counter()
            sess.run(None, feed)
            lat[name].append(time.perf_counter() - t0)
        rounds += 1
    out = {}
    for name, values in lat.items():
        ms = np.asarray(values) * 1e3
        out[name] = {"images_per_s": round(1e3 / float(ms.mean()), 2), "latency_ms_mean": round(float(ms.mean()), 3),
                     "latency_ms_p50": round(float(np.percentile(ms, 50)), 3),
                     "latency_ms_p90": round(float(np.percentile(ms, 90)), 3), "iterations": len(values)}
    return out


def profile_ops(path: Path, imgsz: int, threads: int, work: Path, iterations: int = 100) -> dict:
    """Where the time goes: onnxruntime's per-node kernel times, summed by op type (share of all kernel time)."""
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    sess = session(path, threads, profile_prefix=str(work / f"ort_profile_{path.parent.name}"))
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(10 + iterations):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = collections.defaultdict(float)
    nodes: dict[str, int] = collections.Counter()
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            by_op[op] += ev["dur"]
            nodes[op] += 1
    runs = 10 + iterations
    total = sum(by_op.values())
    top = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {
        "kernel_ms_per_image": round(total / 1e3 / runs, 3),
        "ops": [{"op": op, "share": round(us / total, 4), "ms_per_image": round(us / 1e3 / runs, 4),
                 "nodes": nodes[op] // runs} for op, us in top],
    }


def measure(args, work: Path, ckpts: dict[str, Path], data: Path) -> dict:
    from sparse_core.bench.cpu import cpu_info
    from sparse_core.checkpoint import checkpoint_model, load_checkpoint
    from sparse_core.export import export_model, graph
    from sparse_core.onnx_val import val_onnx
    from sparse_core.structured import conv_macs

    rows: dict[str, dict] = {}
    for name, ckpt in ckpts.items():
        out = work / "deploy" / name
        info = export_model(ckpt, out, imgsz=args.imgsz)
        model = checkpoint_model(load_checkpoint(ckpt))
        metrics = val_onnx(out, data)
        sizes = graph.file_sizes(out / "model.onnx")
        rows[name] = {
            "onnx": str(out / "model.onnx"), "map50": metrics["map50"], "map50_95": metrics["map50_95"],
            "size_mb": sizes["size_bytes"] / 1e6, "size_gzip_mb": sizes["size_gzip_bytes"] / 1e6,
            "conv_params": info["conv_params"], "sparsity": info["sparsity"], "quantized": info["quantized"],
            "gmacs": conv_macs(model.float(), args.imgsz) / 1e9 if not info["quantized"] else None,
            "integer_convs": info["ort_optimized"]["integer_convs"],
            "float_convs": info["ort_optimized"]["float_convs"],
            "export_parity": info["parity_max_abs_diff"],
        }
        log(f"{name}: mAP50 {metrics['map50']:.4f} (onnx), {rows[name]['size_mb']:.2f} MB, "
            f"{rows[name]['size_gzip_mb']:.2f} MB gzip")
    if rows["pq"]["gmacs"] is None:
        rows["pq"]["gmacs"] = rows["structured"]["gmacs"]  # same convs, INT8
    timing = {}
    for threads in sorted({args.threads, 1}, reverse=True):
        log(f"timing {len(rows)} models interleaved for {args.seconds:.0f} s ({threads} threads, batch 1)")
        timing[threads] = interleaved({n: Path(r["onnx"]) for n, r in rows.items()}, args.imgsz, threads,
                                      args.seconds, args.warmup)
        for name, t in timing[threads].items():
            t["speedup"] = round(t["images_per_s"] / timing[threads]["dense"]["images_per_s"], 3)
    dense = rows["dense"]
    for name, r in rows.items():
        r["timing"] = {th: t[name] for th, t in timing.items()}
        r["map50_retained"] = round(r["map50"] / dense["map50"], 4) if dense["map50"] else 0.0
        r["gzip_ratio"] = round(dense["size_gzip_mb"] / r["size_gzip_mb"], 2)
    profiles = {n: profile_ops(Path(rows[n]["onnx"]), args.imgsz, 1, work) for n in ("dense", "structured", "pq")}
    import onnxruntime
    import torch
    import ultralytics

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_info(), "threads": args.threads, "thread_counts": sorted(timing, reverse=True),
        "imgsz": args.imgsz, "batch": 1, "seconds": args.seconds,
        "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                     "ultralytics": ultralytics.__version__, "python": platform.python_version()},
        "settings": {k: getattr(args, k) for k in ("n_train", "n_val", "classes", "dense_epochs", "prune_epochs",
                                                   "qat_epochs", "sparsity", "channel_sparsity", "qat_lr")},
        "rows": rows, "profiles": profiles,
    }


# ---------------------------------------------------------------------------------------------------- report


def markdown(res: dict, train_s: dict[str, float], total_s: float) -> str:
    cpu = res["cpu"]
    flags = ", ".join(k for k, v in cpu["flags"].items() if v) or "none"
    s = res["settings"]
    ths = res["thread_counts"]
    lines = [
        "# Speed: dense vs pruned vs structured vs pruned-quantized YOLOv8n (onnxruntime, CPU)",
        "",
        f"Measured {res['date']} by `make bench` (`benchmarks/speed.py`), {total_s / 60:.1f} min in all.",
        "",
        f"- CPU: {cpu['model']}, ISA {cpu['isa']} (flags: {flags}); {cpu['available_cpus']} CPUs available to the "
        f"process; onnxruntime {res['versions']['onnxruntime']} CPU, torch {res['versions']['torch']}, "
        f"ultralytics {res['versions']['ultralytics']}.",
        f"- Batch 1, {res['imgsz']}x{res['imgsz']} px; all four models timed in one process, interleaved (each round "
        f"runs every model once, order reversed every round), {res['seconds']:.0f} s per thread setting "
        f"({', '.join(map(str, ths))} threads).",
        f"- Data: generated shapes ({s['classes']} classes, {s['n_train']} train / {s['n_val']} val images). Dense: "
        f"{s['dense_epochs']} epochs from `yolov8n.yaml` (random init). Pruned: dense + {s['prune_epochs']} epochs "
        f"GMP to {s['sparsity']:.0%} zeros per conv. Structured: dense + {s['prune_epochs']} epochs structured GMP "
        f"removing {s['channel_sparsity']:.0%} of the channels of every coupled group, then thinned. PQ: structured "
        f"+ {s['qat_epochs']} epochs INT8 QAT, exported QDQ. Each variant is its run's last.pt.",
        "- mAP50 / mAP50-95: the exported .onnx run by onnxruntime through Ultralytics' validator on the val split.",
        "",
        "| variant | mAP50 | mAP50 retained | mAP50-95 | "
        + " | ".join(f"img/s {t}T | speedup {t}T" for t in ths)
        + " | conv GMACs | MB raw | MB gzip | gzip ratio vs dense | conv weight zeros |",
        "|---|---:|---:|---:|" + "---:|---:|" * len(ths) + "---:|---:|---:|---:|---:|",
    ]
    for name in VARIANTS:
        r = res["rows"][name]
        timing = " | ".join(f"{r['timing'][t]['images_per_s']:.1f} | {r['timing'][t]['speedup']:.2f}x" for t in ths)
        lines.append(
            f"| {LABELS[name]} | {r['map50']:.4f} | {r['map50_retained']:.1%} | {r['map50_95']:.4f} | {timing} | "
            f"{r['gmacs']:.3f} | {r['size_mb']:.2f} | {r['size_gzip_mb']:.2f} | {r['gzip_ratio']:.1f}x | "
            f"{r['sparsity']:.0%} |")
    pq = res["rows"]["pq"]
    speedups = ", ".join(f"{pq['timing'][t]['speedup']:.2f}x at {t} thread{'s' if t > 1 else ''}" for t in ths)
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines += [
        "", "Issue 6 targets in this run:", "",
        f"- PQ img/s vs dense FP32 (target >= 4x): **{speedups}** — "
        f"{met(all(pq['timing'][t]['speedup'] >= 4 for t in ths))}",
        f"- dense/PQ gzip size (target >= 15x): **{pq['gzip_ratio']:.1f}x** — {met(pq['gzip_ratio'] >= 15)}",
        f"- PQ mAP50 retained (target >= 97%): **{pq['map50_retained']:.1%}** — {met(pq['map50_retained'] >= 0.97)}",
        "",
        f"PQ graph as onnxruntime optimises it: {pq['integer_convs']} integer convs (QLinearConv), "
        f"{pq['float_convs']} float convs.",
        "",
        "Reading the numbers:",
        "",
    ] + notes(res) + [""]
    for name in ("pq", "structured", "dense"):
        prof = res["profiles"][name]
        lines += [f"## Where the time goes: {LABELS[name]}", "",
                  f"onnxruntime profiler, 1 thread: {prof['kernel_ms_per_image']:.2f} ms of kernel time per image.", "",
                  "| op type | share | ms / image | nodes |", "|---|---:|---:|---:|"]
        for op in prof["ops"][:10]:
            lines.append(f"| {op['op']} | {op['share']:.1%} | {op['ms_per_image']:.3f} | {op['nodes']} |")
        lines.append("")
    lines += ["Training wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in train_s.items()) + ".", ""]
    return "\n".join(lines)


def notes(res: dict) -> list[str]:
    """Observations computed from this run's figures (what limits the PQ speed-up, how noisy the machine was)."""
    rows, ths = res["rows"], res["thread_counts"]
    out = []
    for t in ths:
        ratio = rows["pq"]["timing"][t]["images_per_s"] / rows["structured"]["timing"][t]["images_per_s"]
        out.append(f"- INT8 vs FP32 of the same thinned model ({t} thread{'s' if t > 1 else ''}): PQ runs at "
                   f"{ratio:.2f}x the structured FP32 img/s; structured pruning alone gives "
                   f"{rows['structured']['timing'][t]['speedup']:.2f}x over dense with "
                   f"{rows['dense']['gmacs'] / rows['structured']['gmacs']:.1f}x fewer conv MACs.")
    ops = {o["op"]: o for o in res["profiles"]["pq"]["ops"]}
    qdq = sum(ops[k]["share"] for k in ("QuantizeLinear", "DequantizeLinear") if k in ops)
    act = sum(ops[k]["share"] for k in ("Sigmoid", "Mul") if k in ops)
    conv = ops.get("QLinearConv", {}).get("share", 0.0)
    out.append(f"- PQ kernel time: integer convs {conv:.0%}, QuantizeLinear/DequantizeLinear {qdq:.0%}, float SiLU "
               f"(Sigmoid + Mul between a conv's output Q/DQ and the next conv's input Q) {act:.0%}.")
    if len(ths) > 1:
        many, one = ths[0], ths[-1]
        scale = rows["dense"]["timing"][many]["images_per_s"] / rows["dense"]["timing"][one]["images_per_s"]
        out.append(f"- Dense img/s at {many} threads is {scale:.2f}x its 1-thread figure"
                   + (" (below 1: other work held the cores during this run; compare ratios within a column)."
                      if scale < 1 else "."))
    return out


def update_readme(md: str, readme: Path) -> bool:
    """Replace the table between the README's bench markers with this run's (the README shows the latest run)."""
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if not readme.is_file():
        return False
    text = readme.read_text()
    if start not in text or end not in text:
        return False
    lines = md.splitlines()
    table = [ln for ln in lines if ln.startswith("|")][: 2 + len(VARIANTS)]
    machine = next(ln for ln in lines if ln.startswith("- CPU:"))[2:]
    body = "\n".join([f"`make bench`, {res_date(md)}: {machine}", "", *table, "",
                      "Details, targets and the onnxruntime profile: "
                      "[benchmarks/results/speed.md](benchmarks/results/speed.md)."])
    new = text[: text.index(start) + len(start)] + "\n" + body + "\n" + text[text.index(end):]
    write_atomic(readme, new)
    return True


def res_date(md: str) -> str:
    line = next(ln for ln in md.splitlines() if ln.startswith("Measured "))
    return line.split()[1][:10]


def plot(res: dict, path: Path) -> None:
    """mAP50 vs img/s, one panel per thread count; marker area ~ model MB, label = speedup vs dense."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ths = res["thread_counts"]
    fig, axes = plt.subplots(1, len(ths), figsize=(6 * len(ths), 4.5), squeeze=False)
    rows = res["rows"]
    biggest = max(r["size_mb"] for r in rows.values())
    colours = {"dense": "tab:gray", "pruned": "tab:blue", "structured": "tab:green", "pq": "tab:red"}
    lo = min(r["map50"] for r in rows.values())
    for ax, threads in zip(axes[0], ths):
        for name in VARIANTS:
            r, t = rows[name], rows[name]["timing"][threads]
            ax.scatter(t["images_per_s"], r["map50"], s=60 + 1500 * r["size_mb"] / biggest, alpha=0.6,
                       color=colours[name], edgecolors="black", label=f"{LABELS[name]} ({r['size_mb']:.2f} MB)")
            ax.annotate(f"{t['speedup']:.2f}x", (t["images_per_s"], r["map50"]), textcoords="offset points",
                        xytext=(6, 8), fontsize=8)
        plural = "s" if threads > 1 else ""
        ax.set_xlabel(f"images/s (onnxruntime, {threads} thread{plural}, batch 1, {res['imgsz']} px)")
        ax.set_ylabel("mAP50 (val, .onnx)")
        ax.grid(alpha=0.3)
        ax.set_ylim(max(0.0, lo - 0.1), min(1.0, max(r["map50"] for r in rows.values()) + 0.05) + 0.02)
        ax.set_xlim(0, max(r["timing"][threads]["images_per_s"] for r in rows.values()) * 1.3)
    axes[0][0].legend(fontsize=7, loc="lower right", markerscale=0.4)
    fig.suptitle(f"YOLOv8n variants on {res['cpu']['model']} ({res['cpu']['isa']}), {res['date'][:10]}; "
                 "marker area ~ MB, label = speedup vs dense", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench", help="scratch folder (models, data)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--n-val", type=int, default=64)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dense-epochs", type=int, default=15)
    ap.add_argument("--prune-epochs", type=int, default=10)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--qat-lr", type=float, default=1e-3)
    ap.add_argument("--sparsity", type=float, default=0.8, help="unstructured GMP final sparsity")
    ap.add_argument("--channel-sparsity", type=float, default=0.75, help="structured: channels removed per group")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seconds", type=float, default=60.0, help="interleaved timing, all models together")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reuse", action="store_true", help="reuse data/models already in --work")
    args = ap.parse_args()

    t0 = time.time()
    work = args.work.resolve()
    if not args.reuse and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    ckpts, train_s, data = build_variants(args, work)
    res = measure(args, work, ckpts, data)
    res["train_seconds"] = train_s
    res["total_seconds"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "speed.json", json.dumps(res, indent=2) + "\n")
    md = markdown(res, train_s, res["total_seconds"])
    write_atomic(args.out / "speed.md", md)
    if args.out.resolve() == (ROOT / "benchmarks" / "results").resolve():
        update_readme(md, ROOT / "README.md")
    plot(res, args.out / "speed.png")
    log(f"wrote {args.out / 'speed.md'} in {res['total_seconds'] / 60:.1f} min")
    print((args.out / "speed.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
