"""`make bench`: engine x {dense, thin, PQ} for YOLOv8n and YOLOv8s at 640 px, from nothing, in one process.

1. generate a detection data set (``synth_dataset``: coloured shapes, ``--train-imgsz`` px);
2. per model size: train a dense model from ``yolov8{n,s}.yaml`` (random init, nothing downloaded), thin it with
   structured GMP (``recipes/structured_prune.yaml``: 75% of every coupled channel group removed), then INT8 QAT of
   the thin model (per-tensor weights: the form DeepSparse compiles natively) — dense / thin / PQ;
3. export each at ``--imgsz`` (timing) and at the training size (mAP50-95 on onnxruntime; the PQ export also runs
   the exported-INT8 accuracy gate on onnxruntime and OpenVINO);
4. per installed engine (onnxruntime, OpenVINO f32, OpenVINO at its default precision, DeepSparse 1.8 through its
   side venv), load all six models and time them interleaved in ONE process by ``sparse_core.bench``'s rules:
   no spinning onnxruntime threads, an untimed warm-up per model, ABBA blocks each starting with an untimed run,
   batch 1, same threads; then profile the thin and PQ graphs (onnxruntime, OpenVINO default);
5. write ``benchmarks/results/speed.md`` (tables, ISA, load, profiles) and ``speed.json`` (every number).

Speed does not depend on the weights; the mAP columns only say the variants were trained (the shapes set is easy).

    .venv/bin/python benchmarks/speed.py [--models n,s] [--imgsz 640] [--threads 2] [--seconds 3] [--reuse]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from sparse_core.bench.openvino_isa import VNNI_CAP  # noqa: E402

VARIANTS = ("dense", "thin", "pq", "thin16", "pq16")
LABELS = {"dense": "dense FP32", "thin": "thin FP32 (75% channels removed)", "pq": "PQ (thin + INT8 QAT)",
          "thin16": "thin with every kept width a multiple of 16 (channel_multiple: 16)", "pq16": "thin16 + INT8 QAT"}
QAT_RECIPE = """# INT8 QAT of the thin model; per-tensor weights (DeepSparse compiles only scalar weight scales natively).
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
    scheme:
      weights:
        num_bits: 8
        symmetric: true
        strategy: tensor
"""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_atomic(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(data)
    os.replace(tmp, path)


def train_stage(name: str, args, work: Path, data: Path, **kw) -> Path:
    """Train one variant (or reuse it); returns last.pt (the model at the recipe's end, not the fittest epoch)."""
    from sparse_core.integrations.ultralytics import train

    last = work / "runs" / name / "weights" / "last.pt"
    if args.reuse and last.exists():
        log(f"{work.name}/{name}: reusing {last}")
        return last
    log(f"{work.name}/{name}: training")
    summary = train(data=str(data), imgsz=args.train_imgsz, batch=args.batch, workers=args.workers,
                    project=work / "runs", name=name, plots=False, seed=0, **kw)
    log(f"{work.name}/{name}: mAP50-95 (PyTorch, val) {summary['map50_95']:.4f}")
    return Path(summary["weights"]["last"])


def build(args, work: Path, data: Path, size: str) -> dict[str, Path]:
    from sparse_core.recipes import path as recipe_path

    w = work / f"v8{size}"
    ckpts = {"dense": train_stage("dense", args, w, data, model=f"yolov8{size}.yaml", epochs=args.dense_epochs)}
    e = args.prune_epochs
    ckpts["thin"] = train_stage("thin", args, w, data, model=str(ckpts["dense"]),
                                recipe=str(recipe_path("structured_prune.yaml")),
                                recipe_args={"num_epochs": e, "pruning_end_epoch": max(1, round(e * 0.6)),
                                             "final_sparsity": args.channel_sparsity})
    q = max(args.qat_epochs, 2)  # observers must see at least one epoch before they freeze
    recipe = w / "qat.yaml"
    write_atomic(recipe, QAT_RECIPE.format(epochs=q, lr=args.qat_lr, final_lr=args.qat_lr / 100, freeze=q - 1))
    ckpts["pq"] = train_stage("pq", args, w, data, model=str(ckpts["thin"]), recipe=str(recipe))
    if args.channel_multiple:  # the same pruning with INT8-friendly kept widths (no conv below M output channels)
        m = args.channel_multiple
        thin_recipe = w / f"structured_m{m}.yaml"
        text = recipe_path("structured_prune.yaml").read_text()
        write_atomic(thin_recipe, text.replace("    mask_type: filter", f"    mask_type: filter\n    channel_multiple: {m}"))
        ckpts["thin16"] = train_stage(f"thin_m{m}", args, w, data, model=str(ckpts["dense"]), recipe=str(thin_recipe),
                                      recipe_args={"num_epochs": e, "pruning_end_epoch": max(1, round(e * 0.6)),
                                                   "final_sparsity": args.channel_sparsity})
        ckpts["pq16"] = train_stage(f"pq_m{m}", args, w, data, model=str(ckpts["thin16"]), recipe=str(recipe))
    return ckpts


def export_all(args, work: Path, data: Path, ckpts: dict) -> dict[str, dict]:
    """Each variant exported at --imgsz (timed) and at the training size (scored)."""
    from sparse_core.export import export_model
    from sparse_core.onnx_val import val_onnx

    rows = {}
    for (size, variant), ckpt in ckpts.items():
        out = work / "deploy" / f"v8{size}-{variant}"
        small = work / "deploy" / f"v8{size}-{variant}-{args.train_imgsz}"
        if not (args.reuse and (out / "export.json").is_file()):
            export_model(ckpt, out, imgsz=args.imgsz, data=data, allow_drop=True)
        if not (args.reuse and (small / "export.json").is_file()):
            export_model(ckpt, small, imgsz=args.train_imgsz, data=data, allow_drop=True)
        info = json.loads((small / "export.json").read_text())
        rows[f"v8{size}-{variant}"] = {
            "size": size, "variant": variant, "deploy": str(out),
            "map50_95": val_onnx(small, data)["map50_95"], "accuracy": info.get("accuracy"),
            "size_gzip_mb": info["size_gzip_bytes"] / 1e6, "quantized": info["quantized"],
        }
        log(f"v8{size}-{variant}: mAP50-95 {rows[f'v8{size}-{variant}']['map50_95']:.4f} (onnxruntime)")
    return rows


def engines_available() -> list[tuple[str, str | None]]:
    """(engine, precision) columns: onnxruntime, OpenVINO f32 and default, DeepSparse if its side venv exists; on
    an AMX CPU also OpenVINO with oneDNN capped at AVX-512 VNNI (its AMX INT8 kernels are slow at narrow widths)."""
    from sparse_core.bench import deepsparse_venv
    from sparse_core.bench.cpu import cpu_info

    cols = [("onnxruntime", None), ("openvino", "f32"), ("openvino", None), ("openvino-nncf-int8", None)]
    if cpu_info()["flags"]["amx"]:
        cols.append(("openvino-vnni", None))
    try:
        deepsparse_venv.python()
        cols.append(("deepsparse", None))
    except Exception as err:  # UserError naming the missing venv
        log(f"DeepSparse column skipped: {err}")
    return cols


def nncf_int8(row: dict, data: Path, imgsz: int) -> Path:
    """The deployment's FP32 model quantized by NNCF for OpenVINO (what `export format=openvino int8=True` gives)."""
    from sparse_core.export import openvino_int8

    xml = Path(row["deploy"]) / "openvino_int8" / "model.xml"
    if not xml.is_file():
        log(f"{Path(row['deploy']).name}: NNCF post-training INT8 for OpenVINO")
        from sparse_core.baseline import calibration_images, letterbox

        openvino_int8.ptq(Path(row["deploy"]) / "model.onnx", xml,
                          [letterbox(p, imgsz) for p in calibration_images(data, 16)])
    return xml


def load_column(rows: dict, engine: str, precision: str | None, imgsz: int, threads: int) -> dict:
    from sparse_core.bench import deepsparse_venv, engines, openvino_isa
    from sparse_core.export.graph import deployment_model

    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    loaded = {}
    for name, row in rows.items():
        path = deployment_model(row["deploy"], "openvino" if engine.startswith("openvino") else engine)
        if engine == "openvino-nncf-int8":
            if not row["variant"].startswith("pq"):  # PQ is INT8 already (QAT)
                loaded[name] = engines.openvino(Path(row["nncf_int8"]), x, threads, precision)
        elif engine == "onnxruntime":
            loaded[name] = engines.onnxruntime(path, x, threads, spinning=False)
        elif engine == "openvino":
            loaded[name] = engines.openvino(path, x, threads, precision)
        elif engine == "openvino-vnni":  # a worker process per model: oneDNN reads the cap once per process
            loaded[name] = openvino_isa.load(path, x, threads, precision, VNNI_CAP)
        else:
            loaded[name] = deepsparse_venv.load(path, x, threads)
    return loaded


def _profile(loaded, row: dict, runs: int) -> dict:
    import onnx

    from sparse_core.bench import why

    prof = loaded.profile(runs)
    kernels = prof.pop("conv_kernels", None)
    path = Path(row["deploy"]) / "model.onnx"
    macs = why.conv_macs(onnx.load(str(path)))
    share = why.ort_integer_share(path, macs) if kernels is None else why.ov_integer_share(kernels, macs)
    return {**prof, "integer_conv_mac_share": share["integer_conv_mac_share"]}


def measure(args, rows: dict) -> dict:
    """One engine column at a time (all its models interleaved, then released): an idle engine's threads (TBB,
    DeepSparse workers) never compete with the column being timed; ratios within a column are the result."""
    from sparse_core.bench.runner import interleaved

    cols = engines_available()
    cells, profiles = {}, {}
    for engine, precision in cols:
        col = f"{engine}|{precision or 'default'}"
        loaded = load_column(rows, engine, precision, args.imgsz, args.threads)
        log(f"timing {col}: {len(loaded)} models interleaved, ~{args.seconds:.0f} s each, {args.threads} threads")
        lat = interleaved({k: v.run for k, v in loaded.items()}, args.warmup, args.seconds * len(loaded))
        for name, v in lat.items():
            cells[f"{name}|{col}"] = {"precision": loaded[name].precision, "version": loaded[name].version,
                                      "native_share": loaded[name].extra.get("native_share"),
                                      "images_per_s": round(len(v) / sum(v), 2),
                                      "p50_ms": round(float(np.median(v)) * 1e3, 2), "iterations": len(v)}
        if engine in ("onnxruntime", "openvino-vnni") or (engine == "openvino" and precision is None):
            for name in loaded:
                if rows[name]["variant"] != "dense":
                    profiles[f"{name}|{col}"] = _profile(loaded[name], rows[name], args.profile_runs)
        for m in loaded.values():
            m.close()
    return {"columns": [f"{e}|{p or 'default'}" for e, p in cols], "cells": cells, "profiles": profiles}


def _col_title(col: str, cells: dict) -> str:
    engine, precision = col.split("|")
    seen = sorted({c["precision"] for k, c in cells.items() if k.endswith(f"|{col}")})
    if engine == "openvino":
        return f"OpenVINO {'default ' if precision == 'default' else ''}({'/'.join(seen)})"
    if engine == "openvino-vnni":
        return f"OpenVINO default ({'/'.join(seen)}), oneDNN capped at {VNNI_CAP}"
    return {"onnxruntime": "onnxruntime (f32, int8 QDQ)", "deepsparse": "DeepSparse 1.8",
            "openvino-nncf-int8": f"OpenVINO NNCF INT8 PTQ ({'/'.join(seen)})"}.get(engine, engine)


def _ratio(res: dict, size: str, a: str, b: str, col: str) -> float:
    c = res["cells"]
    return c[f"v8{size}-{a}|{col}"]["images_per_s"] / c[f"v8{size}-{b}|{col}"]["images_per_s"]


def _ratio_across(res: dict, size: str, col: str) -> float:
    """Our QAT PQ model on OpenVINO's default precision vs NNCF's post-training INT8 of the thin model."""
    c = res["cells"]
    return c[f"v8{size}-pq|openvino|default"]["images_per_s"] / c[f"v8{size}-thin|{col}"]["images_per_s"]


def speed_table(res: dict, rows: dict) -> list[str]:
    cols, cells = res["columns"], res["cells"]
    lines = ["| model | " + " | ".join(_col_title(c, cells) for c in cols) + " | mAP50-95 (onnxruntime) | MB gzip |",
             "|---|" + "---:|" * (len(cols) + 2)]
    for name, row in rows.items():
        vals = []
        for col in cols:
            c = cells.get(f"{name}|{col}")
            if c is None:
                vals.append("—")
                continue
            native = f" ({c['native_share']:.0%} native)" if c.get("native_share") is not None else ""
            vals.append(f"{c['images_per_s']:.1f}{native}")
        lines.append(f"| v8{row['size']} {row['variant']} | " + " | ".join(vals)
                     + f" | {row['map50_95']:.4f} | {row['size_gzip_mb']:.2f} |")
    return lines


def targets(res: dict, sizes: list[str]) -> list[str]:
    """The issue's must-show ratios, computed from this run (met / NOT met, never asserted)."""
    cols = res["columns"]
    out = []
    for size in sizes:
        for col in cols:
            if f"v8{size}-pq|{col}" not in res["cells"]:
                out.append(f"- v8{size} {col}: thin/dense {_ratio(res, size, 'thin', 'dense', col):.2f}x; PQ from "
                           f"QAT vs this column's thin: {_ratio_across(res, size, col):.2f}x")
                continue
            out.append(f"- v8{size} {col}: thin/dense {_ratio(res, size, 'thin', 'dense', col):.2f}x, "
                       f"PQ/thin {_ratio(res, size, 'pq', 'thin', col):.2f}x, "
                       f"PQ/dense {_ratio(res, size, 'pq', 'dense', col):.2f}x")
        ort = "onnxruntime|default"
        checks = [("PQ >= 1.3x thin on onnxruntime", _ratio(res, size, "pq", "thin", ort) >= 1.3),
                  ("PQ >= 1.3x thin on OpenVINO default", _ratio(res, size, "pq", "thin", "openvino|default") >= 1.3),
                  ("PQ on onnxruntime >= 4x dense", _ratio(res, size, "pq", "dense", ort) >= 4)]
        if f"v8{size}-pq16|{ort}" in res["cells"]:
            for col in (ort, "openvino|default"):
                out.append(f"- v8{size} {col}, kept widths multiples of 16: PQ16/thin16 "
                           f"{_ratio(res, size, 'pq16', 'thin16', col):.2f}x, PQ16/thin (best FP32 thin) "
                           f"{_ratio(res, size, 'pq16', 'thin', col):.2f}x, thin16/thin "
                           f"{_ratio(res, size, 'thin16', 'thin', col):.2f}x")
            checks += [(f"PQ16 >= 1.3x thin16 on {e}", _ratio(res, size, "pq16", "thin16", c) >= 1.3)
                       for e, c in (("onnxruntime", ort), ("OpenVINO default", "openvino|default"))]
        vnni = "openvino-vnni|default"
        if f"v8{size}-pq|{vnni}" in res["cells"]:  # the capped PQ against the fastest thin on any OpenVINO column
            best = max(res["cells"][f"v8{size}-thin|{c}"]["images_per_s"] for c in ("openvino|f32", "openvino|default"))
            ratio = res["cells"][f"v8{size}-pq|{vnni}"]["images_per_s"] / best
            out.append(f"- v8{size} PQ with oneDNN capped at {VNNI_CAP} vs the fastest OpenVINO thin (f32 or default): "
                       f"{ratio:.2f}x")
            checks.append((f"PQ ({VNNI_CAP} kernels) >= 1.3x the fastest OpenVINO thin", ratio >= 1.3))
        ds = res["cells"].get(f"v8{size}-pq|deepsparse|default")
        if ds:
            checks.append(("DeepSparse compiles >= 90% of PQ natively", (ds["native_share"] or 0) >= 0.9))
            checks.append(("DeepSparse PQ >= 1.3x thin", _ratio(res, size, "pq", "thin", "deepsparse|default") >= 1.3))
        out += [f"  - {text}: {'met' if ok else 'NOT met'}" for text, ok in checks]
    return out


def profile_lines(res: dict) -> list[str]:
    lines = []
    for key, prof in res["profiles"].items():
        name, engine, precision = key.split("|")
        ops = ", ".join(f"{o['op']} {o['share']:.0%}" for o in prof["ops"][:6])
        lines.append(f"- {name} on {engine} ({precision}): {prof['ms_per_run']:.1f} ms of kernel time; "
                     f"{prof['integer_conv_mac_share']:.0%} of conv MACs in integer kernels; Q/DQ ops "
                     f"{prof['qdq_share']:.0%}; top ops: {ops}")
    return lines


def markdown(res: dict, rows: dict, args, loads: tuple) -> str:
    cpu = res["cpu"]
    flags = ", ".join(k for k, v in cpu["flags"].items() if v) or "none"
    acc = [f"- v8{r['size']} PQ exported INT8 vs PyTorch fake-quant mAP50-95 (at {args.train_imgsz} px): "
           + ", ".join(f"{k} {v:.4f}" for k, v in r["accuracy"]["map50_95"].items())
           + (" — FLAGGED (drop > 1 point)" if r["accuracy"]["flagged"] else "")
           for r in rows.values() if r["variant"] == "pq" and r.get("accuracy") and "map50_95" in r["accuracy"]]
    return "\n".join([
        "# Speed: engine x {dense, thin, PQ} for YOLOv8n and YOLOv8s (CPU, batch 1)", "",
        f"Measured {res['date']} by `make bench` (`benchmarks/speed.py`), {res['total_seconds'] / 60:.1f} min in all.", "",
        f"- CPU: {cpu['model']}, ISA **{cpu['isa']}** (flags: {flags}); {cpu['available_cpus']} CPUs available; "
        f"load average {loads[0]:.1f} at the start of timing, {loads[1]:.1f} at its end (the machine is shared: "
        "compare ratios within one table, not absolute figures across runs).",
        f"- {args.imgsz}x{args.imgsz} px, {args.threads} threads, batch 1; every model on every engine loaded in one "
        "process and timed interleaved (ABBA blocks, untimed run at each switch, onnxruntime threads not spinning), "
        f"~{args.seconds:g} s each; one engine column at a time (its models interleaved); images/s.",
        f"- Versions: {res['versions']}.",
        f"- Training (speed does not depend on the weights): {args.n_train} images at {args.train_imgsz} px; dense "
        f"{args.dense_epochs} epochs from the yaml, thin +{args.prune_epochs} epochs structured GMP removing "
        f"{args.channel_sparsity:.0%} of every coupled channel group, PQ +{max(args.qat_epochs, 2)} epochs INT8 QAT "
        "(per-tensor weights)"
        + (f"; thin16/pq16: the same with `channel_multiple: {args.channel_multiple}` (every kept width a multiple of "
           f"{args.channel_multiple}, none below it)" if args.channel_multiple else "") + ". DeepSparse runs `model.deepsparse.onnx`; its cell says how much it compiled natively.",
        "",
        *speed_table(res, rows), "",
        "Ratios and the issue's targets in this run:", "", *targets(res, args.models), "",
        "Accuracy (generated shapes set: easy, says only that the variants are trained):", "", *acc, "",
        "## Where the time goes (thin and PQ; onnxruntime profiler, OpenVINO performance counters)", "",
        *profile_lines(res), "",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench", help="scratch folder (models, data)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--models", type=lambda s: s.split(","), default=["n", "s"], help="YOLOv8 sizes, e.g. n,s")
    ap.add_argument("--imgsz", type=int, default=640, help="timing image size")
    ap.add_argument("--train-imgsz", type=int, default=160)
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--n-val", type=int, default=64)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dense-epochs", type=int, default=15)
    ap.add_argument("--prune-epochs", type=int, default=10)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--qat-lr", type=float, default=1e-3)
    ap.add_argument("--channel-sparsity", type=float, default=0.75, help="structured: channels removed per group")
    ap.add_argument("--channel-multiple", type=int, default=16,
                    help="also build thin16/pq16 with this channel_multiple (0: skip)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model x engine (interleaved)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--profile-runs", type=int, default=10)
    ap.add_argument("--reuse", action="store_true", help="reuse data/models/exports already in --work")
    args = ap.parse_args()

    from sparse_core.bench.cpu import cpu_info
    from sparse_core.data.synth import synth_dataset

    t0, work = time.time(), args.work.resolve()
    if not args.reuse and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data" / "data.yaml"
    if not (args.reuse and data.exists()):
        data = synth_dataset(work / "data", task="detect", n_train=args.n_train, n_val=args.n_val,
                             imgsz=args.train_imgsz, seed=0, n_classes=args.classes)
    ckpts = {(size, v): p for size in args.models for v, p in build(args, work, data, size).items()}
    rows = export_all(args, work, data, ckpts)
    for row in rows.values():
        if not row["variant"].startswith("pq"):
            row["nncf_int8"] = str(nncf_int8(row, data, args.imgsz))
    start_load = os.getloadavg()[0]
    log(f"CPU ISA {cpu_info()['isa']}; load average {start_load:.1f}")
    res = measure(args, rows)
    loads = (start_load, os.getloadavg()[0])
    import onnxruntime
    import openvino

    res.update({"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu_info(),
                "load_average": loads, "threads": args.threads, "imgsz": args.imgsz,
                "versions": {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__},
                "rows": rows, "total_seconds": round(time.time() - t0, 1)})
    write_atomic(args.out / "speed.json", json.dumps(res, indent=2) + "\n")
    md = markdown(res, rows, args, loads)
    write_atomic(args.out / "speed.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
