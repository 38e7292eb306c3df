"""The accuracy/speed frontier on the hard data set (issue 17): ``make bench`` (full) or ``make bench-quick``.

For each base model (default YOLOv8n; ``--models yolov8n yolov8s`` adds YOLOv8s, ~3x the training time) on
``sparsepipe data synth --preset hard``:
1. dense: trained from its yaml for ``--epochs`` (the CPU budget: stated in the report with the machine), and a
   control "dense-ft": the dense model trained on for the structured variants' epochs with their recipe at 0%;
2. variants from the dense ``last.pt``: the OpenVINO INT8 post-training baseline (``sparse_core.baseline``) and
   structured 50/65/75% of the channels distilled from the dense model (``structured_kd_50/75.yaml``,
   ``--teacher``), each with and without the INT8 QAT stage (``structured_kd_qat.yaml``, distilled too);
3. every variant exported twice: at the training size for mAP50-95 on onnxruntime and OpenVINO
   (``sparse_core.onnx_val``), and at 640 px for speed on each engine (``--engines``);
4. one MLflow run per variant (``--mlflow``, default a sqlite store in the work folder), a Pareto plot (mAP50-95 vs
   images/s, one panel per engine, the baseline marked) and a markdown table (``benchmarks/results/frontier.md``).

Engines are taken by name and measured by ``sparse_core.bench.benchmark`` (OpenVINO at its default precision;
DeepSparse through its side venv, ``make deepsparse-venv``, when it exists).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sparse_core.bench.openvino_isa import VNNI_CAP  # noqa: E402  (the "openvino-vnni" column's oneDNN cap)

RESULTS = ROOT / "benchmarks" / "results"
STRUCTURED = {"s50": ("structured_kd_50.yaml", 0.5), "s65": ("structured_kd_50.yaml", 0.65),
              "s75": ("structured_kd_75.yaml", 0.75)}


def log(msg: str) -> None:
    print(f"[frontier {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} CPUs"


# ---------------------------------------------------------------------------------------------------- models


def train_variant(args, work: Path, data: Path, name: str, **kw) -> tuple[Path, float]:
    """One training run (reused with ``--reuse``); returns (last.pt, seconds)."""
    from sparse_core.integrations.ultralytics import train

    last = work / "runs" / name / "weights" / "last.pt"
    took = work / "runs" / name / "train_seconds.txt"  # so a reused run still reports what it cost
    if args.reuse and last.exists():
        return last, float(took.read_text()) if took.is_file() else 0.0
    t0 = time.time()
    summary = train(data=str(data / "data.yaml"), imgsz=args.imgsz, batch=args.batch, workers=0,
                    project=work / "runs", name=name, plots=False, seed=0, **kw)
    seconds = time.time() - t0
    took.write_text(f"{seconds:.0f}\n")
    log(f"{name}: trained in {seconds:.0f} s (PyTorch val mAP50-95 {summary.get('map50_95', 0):.4f})")
    return Path(summary["weights"]["last"]), seconds


def structured_args(args, final: float) -> dict:
    e = args.prune_epochs
    return {"num_epochs": e, "pruning_start_epoch": 0, "pruning_end_epoch": max(1, round(e / 2)),
            "final_sparsity": final}


def generated_recipes(args, work: Path, data: Path, base: str, dense: Path) -> dict[str, Path]:
    """``sparsepipe analyze`` of the dense model once, then per uniform level in ``--generated`` a ``recipe
    generate`` recipe whose target latency is the uniform plan's predicted onnxruntime latency at that level (equal
    speed, channels placed by sensitivity): {"g50": recipe, ...}. Same template, epochs and pruning window as the
    uniform variants, so the only difference is where the channels go."""
    from sparse_core.sensitivity import latency as lat
    from sparse_core.sensitivity.analyze import analyze
    from sparse_core.sensitivity.generate import generate

    folder = work / "analysis" / base
    path = folder / "analysis.json"
    if args.reuse and path.is_file():
        a = json.loads(path.read_text())
    else:
        t0 = time.time()
        a = analyze(str(dense), str(data / "data.yaml"), str(folder), ("onnxruntime",), args.speed_imgsz,
                    seconds=args.seconds, log=log)
        log(f"{base}: analysis in {time.time() - t0:.0f} s")
    segments = {g["id"]: g["segments"] for g in a["groups"]}
    out = {}
    for level in args.generated:
        uniform = {g["id"]: level for g in a["groups"]}
        target_ms = lat.predict(a["latency"]["onnxruntime"], a["structure"], segments, uniform)
        key = f"g{round(100 * level)}"
        out[key] = work / "recipes" / f"{base}-{key}.yaml"
        generate(str(path), str(out[key]), target_latency_ms=target_ms, engine="onnxruntime",
                 epochs=args.prune_epochs, pruning_end=max(1, round(args.prune_epochs / 2)))
    return out


def build(args, work: Path, data: Path, base: str) -> tuple[dict[str, dict], dict]:
    """Train dense and every variant of ``base``; returns ({variant: {'weights' or 'baseline_dir', 'seconds'}},
    the dense run's facts)."""
    from sparse_core.recipes import path as recipe

    dense, t_dense = train_variant(args, work, data, f"{base}-dense", model=f"{base}.yaml", epochs=args.epochs)
    out = {"dense": {"weights": dense, "seconds": t_dense}}
    # control: the dense model trained on for the structured variants' epochs with their recipe at 0% (same LR,
    # same KD), so a variant that beats an under-trained dense model is not mistaken for a lossless one
    w, t = train_variant(args, work, data, f"{base}-dense-ft", model=str(dense), teacher=str(dense),
                         recipe=str(recipe("structured_kd_50.yaml")),
                         recipe_args={**structured_args(args, 0.0), "init_sparsity": 0.0})
    out["dense-ft"] = {"weights": w, "seconds": t_dense + t}
    plans = {key: {"recipe": str(recipe(STRUCTURED[key][0])), "recipe_args": structured_args(args, STRUCTURED[key][1])}
             for key in args.variants}
    if args.generated:  # the same speeds with channels placed by the sensitivity analysis
        plans.update({key: {"recipe": str(r)} for key, r in generated_recipes(args, work, data, base, dense).items()})
    for key, plan in plans.items():
        w, t = train_variant(args, work, data, f"{base}-{key}", model=str(dense), teacher=str(dense), **plan)
        out[f"{key}-kd"] = {"weights": w, "seconds": t}
        if args.qat_epochs:
            q, tq = train_variant(args, work, data, f"{base}-{key}-qat", model=str(w), teacher=str(dense),
                                  recipe=str(recipe("structured_kd_qat.yaml")),
                                  recipe_args={"num_epochs": args.qat_epochs})
            out[f"{key}-kd-qat"] = {"weights": q, "seconds": t + tq}
    out["ov-int8-ptq"] = {"weights": dense, "seconds": 0.0, "baseline": True}
    return out, {"epochs": args.epochs, "imgsz": args.imgsz, "seconds": round(t_dense)}


def deployments(args, work: Path, data: Path, base: str, variant: str, spec: dict) -> dict[str, Path]:
    """{'acc': folder at the training size, 'speed': folder at --speed-imgsz} for one variant."""
    from sparse_core.baseline import openvino_int8_baseline
    from sparse_core.export import export_model

    out = {}
    for kind, size in (("acc", args.imgsz), ("speed", args.speed_imgsz)):
        folder = work / "deploy" / base / f"{variant}-{kind}"
        if not (args.reuse and (folder / "model.onnx").is_file()):
            if spec.get("baseline"):
                openvino_int8_baseline(spec["weights"], data / "data.yaml", folder, imgsz=size, calib=args.calib)
            else:
                export_model(str(spec["weights"]), folder, imgsz=size)
        out[kind] = folder
    return out


# ---------------------------------------------------------------------------------------------------- measuring


def accuracy(folder: Path, data: Path, engine: str) -> float:
    """mAP50-95 of an exported model on ``engine`` (``sparse_core.onnx_val``, OpenVINO at its default precision)."""
    from sparse_core.onnx_val import val_onnx

    return float(val_onnx(folder, data / "data.yaml", engine=engine)["map50_95"])


def default_engines() -> list[str]:
    from sparse_core.bench.cpu import cpu_info

    return ["onnxruntime", "openvino", *(["openvino-vnni"] if cpu_info()["flags"]["amx"] else []), "deepsparse"]


def speeds(folders: dict[str, Path], engine: str, threads: int, seconds: float) -> dict[str, dict]:
    """images/s of every variant's speed folder on ``engine``, all loaded together and timed interleaved
    (``sparse_core.bench.benchmark_many``); {} for DeepSparse without its side venv."""
    from sparse_core.bench import benchmark_many
    from sparse_core.errors import UserError

    try:
        if engine == "openvino-vnni":
            return benchmark_many(folders, engine="openvino", threads=threads, seconds=seconds, isa=VNNI_CAP)
        return benchmark_many(folders, engine=engine, threads=threads, seconds=seconds)
    except UserError as err:
        if engine == "deepsparse":
            log(f"deepsparse: not measured ({str(err)[:160]})")
            return {}
        raise


def measure_accuracy(data: Path, folders: dict[str, Path]) -> dict:
    row = {f"map50_95_{e}": accuracy(folders["acc"], data, e) for e in ("onnxruntime", "openvino")}
    info = json.loads((folders["speed"] / "export.json").read_text())
    row["size_gzip_mb"] = round(info.get("size_gzip_bytes", 0) / 1e6, 3)
    row["conv_params"] = info.get("conv_params")
    return row


def measure_speed(args, rows: dict[str, dict], speed_folders: dict[str, Path]) -> None:
    """images_per_s_<engine> (and precision_<engine>) into ``rows``, one engine at a time, variants interleaved."""
    for engine in args.engines:
        log(f"timing {len(speed_folders)} variants interleaved on {engine}, ~{args.seconds:g} s each")
        res = speeds(speed_folders, engine, args.threads, args.seconds)
        for variant, row in rows.items():
            r = res.get(variant)
            row[f"images_per_s_{engine}"] = None if r is None else round(float(r["images_per_s"]), 2)
            if r and r.get("precision"):
                row[f"precision_{engine}"] = str(r["precision"])
            if r and r.get("openvino_note"):  # loaded another way than the plain one (sparse_core.bench.engines)
                row[f"note_{engine}"] = r["openvino_note"]


# ---------------------------------------------------------------------------------------------------- reporting


def track(uri: str, base: str, variant: str, row: dict, spec: dict, machine: dict) -> None:
    """One MLflow run per variant (experiment ``frontier``, a model-training experiment)."""
    from sparse_core.tracking import Tracker

    with Tracker.start(uri, experiment="frontier", run_name=f"{base}-{variant}",
                       tags={"sparsepipe.bench": "frontier", "base_model": base, "variant": variant}) as t:
        t.log_params({"base": base, "variant": variant, "cpu": machine["cpu"], "train_seconds": round(spec["seconds"])})
        t.log_metrics({k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None})


def ratios(rows: dict[str, dict], engines) -> None:
    """speedup_vs_dense_<engine> and speedup_vs_baseline_<engine>, in place."""
    for ref, key in (("dense", "dense"), ("ov-int8-ptq", "baseline")):
        for e in engines:
            base = (rows.get(ref) or {}).get(f"images_per_s_{e}")
            for row in rows.values():
                if base and row.get(f"images_per_s_{e}"):
                    row[f"speedup_vs_{key}_{e}"] = round(row[f"images_per_s_{e}"] / base, 2)


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" if pct else (f"{v:.1f}" if isinstance(v, float) else str(v))


def markdown(res: dict) -> str:
    engines = res["engines"]
    head = ["model", "variant", "mAP50-95 ort", "mAP50-95 OV", "drop vs dense (pts, the better of dense/dense-ft)", *[f"img/s {e}" for e in engines],
            "x dense (ort)", "x baseline (OV)", "gzip MB", "train s"]
    lines = [f"Frontier on the hard data set ({res['data']}), {res['mode']} run, {res['date']}.",
             f"Machine: {res['machine']['cpu']} (ISA {res['machine'].get('isa') or 'n/a'}), {res['machine']['cpus']} "
             f"CPUs; {res['machine']['load_start']} at the "
             f"start, {res['machine']['load_end']} at the end. Budget: {res['budget']}. Speed at "
             f"{res['speed_imgsz']} px, batch 1, {res['threads']} threads, {res['seconds']} s per model and engine, "
             "all variants of a model timed interleaved in one process; OpenVINO at its default precision. n/a: not measured here (see notes).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for base, rows in res["models"].items():
        for variant, r in rows.items():
            refs = [rows.get(v, {}).get("map50_95_onnxruntime") for v in ("dense", "dense-ft")]
            dense = max((x for x in refs if x is not None), default=None)
            drop = None if dense is None or r.get("map50_95_onnxruntime") is None else \
                round(100 * (dense - r["map50_95_onnxruntime"]), 2)
            cells = [base, variant, _fmt(r.get("map50_95_onnxruntime"), True), _fmt(r.get("map50_95_openvino"), True),
                     _fmt(drop),
                     *[_fmt(r.get(f"images_per_s_{e}")) for e in engines],
                     _fmt(r.get("speedup_vs_dense_onnxruntime")), _fmt(r.get("speedup_vs_baseline_openvino")),
                     _fmt(r.get("size_gzip_mb")), _fmt(r.get("train_seconds"))]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *claims(res), *[f"- {n}" for n in res["notes"]], f"- wall time: {res['wall_seconds']:.0f} s"]
    return "\n".join(lines) + "\n"


def claims(res: dict, budget: float = 1.0) -> list[str]:
    """Issue 17's test per base model: the fastest variant on OpenVINO within ``budget`` mAP50-95 points of dense
    (by the onnxruntime-run mAP), its speed vs the OpenVINO INT8 baseline and vs dense onnxruntime FP32."""
    out = []
    for base, rows in res["models"].items():
        refs = [r.get("map50_95_onnxruntime") for v, r in rows.items() if v in ("dense", "dense-ft")]
        if not any(x is not None for x in refs):
            continue
        dense = max(x for x in refs if x is not None)  # the better-trained dense reference
        ok = {v: r for v, r in rows.items() if v not in ("dense", "dense-ft", "ov-int8-ptq") and
              r.get("map50_95_onnxruntime") is not None and 100 * (dense - r["map50_95_onnxruntime"]) <= budget}
        base_row = rows.get("ov-int8-ptq") or {}
        source = (rows.get("dense") or {}).get("map50_95_onnxruntime")  # the baseline quantizes this one
        drop_b = 100 * (source - base_row["map50_95_onnxruntime"]) if None not in (
            source, base_row.get("map50_95_onnxruntime")) else None
        line = (f"- {base}: dense mAP50-95 {dense:.3f} (the better of dense and dense-ft); OpenVINO INT8 baseline drop vs the dense model it quantizes "
                f"{'n/a' if drop_b is None else f'{drop_b:.2f}'} points")
        if not ok:
            out.append(line + f"; no sparsepipe variant within {budget:g} point of dense")
            continue
        best_v, best = max(ok.items(), key=lambda kv: kv[1].get("images_per_s_openvino") or 0)
        out.append(line + f"; fastest variant within {budget:g} point: {best_v} (drop "
                   f"{100 * (dense - best['map50_95_onnxruntime']):.2f} points): "
                   f"{_fmt(best.get('speedup_vs_baseline_openvino'))}x the baseline on OpenVINO (target 2.5x), "
                   f"{_fmt(best.get('speedup_vs_dense_onnxruntime'))}x dense on onnxruntime FP32 (target 8x)")
    return out


def plot(res: dict, path: Path) -> None:
    """mAP50-95 vs images/s, one panel per engine; the OpenVINO INT8 baseline marked; the Pareto front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = [e for e in res["engines"] if any(r.get(f"images_per_s_{e}") for rows in res["models"].values()
                                                for r in rows.values())]
    fig, axes = plt.subplots(1, len(engines), figsize=(5.5 * len(engines), 4.5), squeeze=False)
    for ax, e in zip(axes[0], engines):
        acc = "map50_95_openvino" if e == "openvino" else "map50_95_onnxruntime"
        for base, rows in res["models"].items():
            pts = [(r[f"images_per_s_{e}"], r.get(acc) or r.get("map50_95_onnxruntime"), v) for v, r in rows.items()
                   if r.get(f"images_per_s_{e}") and (r.get(acc) or r.get("map50_95_onnxruntime")) is not None]
            for x, y, v in pts:
                ax.scatter(x, y, marker="*" if v == "ov-int8-ptq" else "o", s=160 if v == "ov-int8-ptq" else 40)
                ax.annotate(f"{base} {v}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            front, best = [], -1.0
            for x, y, _ in sorted(pts, key=lambda p: -p[0]):
                if y > best:
                    front.append((x, y))
                    best = y
            if front:
                ax.plot(*zip(*sorted(front)), "--", lw=1, label=f"{base} Pareto front")
        ax.set(title=f"{e} (mAP: {acc.split('_')[-1]})", xlabel="images/s (640 px, batch 1)", ylabel="mAP50-95")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------------- main


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="YOLOv8n only, tiny data and epochs, 50/75%% (<= 15 min)")
    ap.add_argument("--work", type=Path, default=ROOT / ".sparsepipe" / "frontier")
    ap.add_argument("--models", nargs="+", default=None, help="default yolov8n (add yolov8s: ~3x the time)")
    ap.add_argument("--variants", nargs="+", choices=sorted(STRUCTURED), default=None)
    ap.add_argument("--generated", nargs="*", type=float, default=None,
                    help="uniform levels to match with a sensitivity-generated recipe (analyze + recipe generate) at "
                         "equal predicted speed; variants g50/g65... (none: --generated with no value)")
    ap.add_argument("--engines", nargs="+", default=None, help="default: onnxruntime openvino deepsparse, plus "
                    f"openvino-vnni (oneDNN capped at {VNNI_CAP}) on CPUs with AMX")
    ap.add_argument("--n-train", type=int), ap.add_argument("--n-val", type=int)
    ap.add_argument("--imgsz", type=int, help="training/validation size (speed is always at --speed-imgsz)")
    ap.add_argument("--epochs", type=int), ap.add_argument("--prune-epochs", type=int)
    ap.add_argument("--qat-epochs", type=int)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--calib", type=int, help="baseline calibration images (Ultralytics uses 300)")
    ap.add_argument("--speed-imgsz", type=int, default=640)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--mlflow", default=None, help="tracking URI (default $MLFLOW_TRACKING_URI, else a sqlite store "
                                                   "in --work)")
    ap.add_argument("--reuse", action="store_true", help="reuse trained checkpoints and exports in --work")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    quick = {"models": ["yolov8n"], "variants": ["s50", "s75"], "n_train": 64, "n_val": 16, "imgsz": 160,
             "epochs": 8, "prune_epochs": 4, "qat_epochs": 2, "calib": 32, "seconds": 3.0, "generated": []}
    # the hard set's calibration run (sparse_core/data/hard.py): dense YOLOv8n, 400 images at 256 px, 40 epochs
    # YOLOv8n only by default: on 2 cores ~65 min (AMD EPYC) for dense, dense-ft and s50/65/75 with QAT, ~20 more
    # for the generated 50% pair (`--generated 0.5 0.65` adds ~20 per level); YOLOv8s trains ~3x longer
    full = {"models": ["yolov8n"], "variants": ["s50", "s65", "s75"], "n_train": 400, "n_val": 100,
            "imgsz": 256, "epochs": 40, "prune_epochs": 12, "qat_epochs": 3, "calib": 300, "seconds": 10.0,
            "generated": [0.5]}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.engines = args.engines or default_engines()
    return args


def main(argv=None) -> int:
    from sparse_core.bench.cpu import cpu_info
    from sparse_core.data.synth import synth_dataset

    args = parse(argv)
    t_start = time.time()
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    uri = args.mlflow or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work / 'mlflow.db'}"
    machine = {"cpu": cpu_info().get("model") or platform.processor(), "isa": cpu_info().get("isa"),
               "cpus": os.cpu_count(),
               "load_start": load_line()}
    log(f"{machine['cpu']}; {machine['load_start']}")
    data = work / "data"
    if not (args.reuse and (data / "data.yaml").is_file()):
        data = synth_dataset(data, n_train=args.n_train, n_val=args.n_val, imgsz=args.imgsz, seed=0, preset="hard").parent
    res = {"mode": "quick" if args.quick else "full", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "data": f"hard preset, {args.n_train} train / {args.n_val} val images at {args.imgsz} px",
           "budget": f"dense {args.epochs} epochs from scratch, structured+KD {args.prune_epochs} epochs "
                     f"(pruning in the first half), QAT+KD {args.qat_epochs} epochs, batch {args.batch}, CPU only",
           "engines": args.engines, "speed_imgsz": args.speed_imgsz, "threads": args.threads,
           "seconds": args.seconds, "machine": machine, "models": {}, "notes": []}
    for base in args.models:
        specs, _ = build(args, work, data, base)
        rows, speed_folders = {}, {}
        for variant, spec in specs.items():
            folders = deployments(args, work, data, base, variant, spec)
            rows[variant] = {**measure_accuracy(data, folders), "train_seconds": round(spec["seconds"])}
            speed_folders[variant] = folders["speed"]
        measure_speed(args, rows, speed_folders)
        for variant, row in rows.items():
            log(f"{base} {variant}: {row}")
        ratios(rows, args.engines)
        for variant, row in rows.items():
            track(uri, base, variant, row, specs[variant], machine)
        res["models"][base] = rows
    maps = [r.get("map50_95_onnxruntime") or 0.0 for rows in res["models"].values() for r in rows.values()]
    if not any(maps):
        res["notes"].append("mAP50-95 is 0 for every variant: this budget does not train a detector on the hard set "
                            "(quick mode checks the wiring and the speeds only; accuracy needs the full run)")
    for e in args.engines:
        if all(r.get(f"images_per_s_{e}") is None for rows in res["models"].values() for r in rows.values()):
            res["notes"].append(f"{e}: not available on this machine (not measured)")
    machine["load_end"] = load_line()
    res["wall_seconds"] = time.time() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    name = "frontier-quick" if args.quick else "frontier"
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (args.out / f"{name}.md").write_text(markdown(res))
    plot(res, args.out / f"{name}.png")
    log(f"wrote {args.out / name}.md/.json/.png in {res['wall_seconds']:.0f} s; MLflow runs in {uri}")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
