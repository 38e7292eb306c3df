"""Issue 27's must-show: the deployment chosen by measurement, per engine, for YOLOv8n/YOLOv8s 75%-thin models.

1. per size: dense from ``yolov8{n,s}.yaml`` (tiny data, few epochs: speed does not depend on weights), thinned by
   structured GMP (75% of every coupled channel group removed), then INT8 QAT twice: per-channel weights (what
   onnxruntime/OpenVINO get) and per-tensor weights (what DeepSparse gets, ``scheme.for_engine``); the QAT stage's
   training time is recorded (what ``precision=auto`` saves where it skips QAT);
2. per engine (onnxruntime, OpenVINO at its default precision, DeepSparse when its side venv exists):
   - the probe (``export.probe``: post-training INT8 of the thin model) predicts whether INT8 pays;
   - ``export.choose.export_for_engine`` times the thin float model and the QAT model's forms interleaved and
     writes the chosen deployment;
   - a second, independent interleaved timing of every candidate confirms: chosen / best candidate and chosen /
     thin (a regression: chosen more than ``NOISE`` below either);
3. DeepSparse: the per-tensor and per-channel QAT exports' DeepSparse forms timed together, with the share each
   compiled natively;
4. writes ``benchmarks/results/choose.md`` (tables, ISA, load) and ``choose.json`` (every number).

No accuracy gate by default (``--gate`` scores the candidates on the tiny set; its mAPs say nothing about
compression). Run on a quiet machine:

    .venv/bin/python benchmarks/choose.py [--models n,s] [--imgsz 640] [--seconds 5] [--reuse]
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

from benchmarks.speed import QAT_RECIPE, log, train_stage, write_atomic  # noqa: E402

PER_CHANNEL_RECIPE = QAT_RECIPE.replace("""    scheme:
      weights:
        num_bits: 8
        symmetric: true
        strategy: tensor
""", "").replace("per-tensor weights (DeepSparse", "per-channel weights (not for DeepSparse")


def build(args, work: Path, data: Path, size: str) -> dict:
    """thin.pt, pq-channel.pt, pq-tensor.pt of one size, and the QAT stages' seconds."""
    from sparse_core.recipes import path as recipe_path

    w = work / f"v8{size}"
    dense = train_stage("dense", args, w, data, model=f"yolov8{size}.yaml", epochs=args.dense_epochs)
    e = args.prune_epochs
    thin = train_stage("thin", args, w, data, model=str(dense), recipe=str(recipe_path("structured_prune.yaml")),
                       recipe_args={"num_epochs": e, "pruning_end_epoch": max(1, round(e * 0.6)),
                                    "final_sparsity": args.channel_sparsity})
    q = max(args.qat_epochs, 2)
    out = {"thin": thin, "qat_seconds": {}}
    for key, text in (("pq-tensor", QAT_RECIPE), ("pq-channel", PER_CHANNEL_RECIPE)):
        recipe = w / f"{key}.yaml"
        write_atomic(recipe, text.format(epochs=q, lr=args.qat_lr, final_lr=args.qat_lr / 100, freeze=q - 1))
        t0 = time.time()
        out[key] = train_stage(key, args, w, data, model=str(thin), recipe=str(recipe))
        out["qat_seconds"][key] = round(time.time() - t0, 1)
    return out


def engines() -> list[str]:
    from sparse_core.bench import deepsparse_venv

    found = ["onnxruntime", "openvino"]
    try:
        deepsparse_venv.python()
        found.append("deepsparse")
    except Exception as err:  # UserError naming the missing venv
        log(f"DeepSparse skipped: {err}")
    return found


def confirm(out: Path, decision: dict, engine: str, seconds: float) -> dict:
    """Every candidate timed again, interleaved, independently of the run that chose: chosen / best, chosen / thin."""
    from sparse_core.export import choose

    folders = {name: out / choose.CANDIDATES_DIR / name for name in ("float", "int8")}
    again = choose.choose(folders, engine, seconds=seconds)
    speed = {r["name"]: r["images_per_s"] for r in again["candidates"]}
    best = max(speed, key=speed.get)
    chosen = speed[decision["chosen"]]
    return {"images_per_s": speed, "best": best, "chosen_vs_best": round(chosen / speed[best], 4),
            "chosen_vs_thin": round(chosen / speed["float"], 4),
            "regression": chosen < speed[best] * (1 - choose.NOISE) or chosen < speed["float"] * (1 - choose.NOISE)}


def cell(args, work: Path, data: Path, size: str, models: dict, engine: str) -> dict:
    from sparse_core.export import choose, probe
    from sparse_core.recipe.schemas import QuantizationModifier

    pq = models["pq-tensor" if engine == "deepsparse" else "pq-channel"]
    mod = QuantizationModifier(ignore=["Upsample", "Concat"])
    log(f"v8{size} {engine}: probe")
    pred = probe.probe(models["thin"], engine, mod, imgsz=args.imgsz, seconds=args.probe_seconds)
    out = work / "deploy" / f"v8{size}-{engine}"
    log(f"v8{size} {engine}: choosing among the thin model and {pq.parent.parent.name}'s forms")
    decision = choose.export_for_engine(pq, out, engine, float_weights=models["thin"], imgsz=args.imgsz,
                                        data=data if args.gate else None, allow_drop=True, seconds=args.seconds)
    check = confirm(out, decision, engine, args.seconds)
    return {"size": size, "engine": engine, "decision": {k: v for k, v in decision.items() if k != "cpu"},
            "probe": {k: v for k, v in pred.items() if k != "candidates"}, "probe_table": pred["candidates"],
            "confirm": check, "agree": pred["int8_pays"] == (decision["form"] == "int8")}


def deepsparse_schemes(args, work: Path, size: str, models: dict) -> dict:
    """The per-tensor and per-channel QAT exports' DeepSparse forms, timed together on DeepSparse."""
    from sparse_core.bench.runner import benchmark_many
    from sparse_core.export import export_model

    paths = {}
    for key in ("pq-tensor", "pq-channel"):
        out = work / "deploy" / f"v8{size}-{key}"
        if not (args.reuse and (out / "export.json").is_file()):
            export_model(models[key], out, imgsz=args.imgsz)
        paths[key] = out  # benchmark_many picks model.deepsparse.onnx for DeepSparse
    res = benchmark_many(paths, "deepsparse", seconds=args.seconds)
    return {k: {"images_per_s": v["images_per_s"], "native_share": v["native_share"]} for k, v in res.items()}


def markdown(res: dict, args) -> str:
    cpu = res["cpu"]
    lines = [
        "# The deployment chosen by measurement (issue 27)", "",
        f"Measured {res['date']} by `benchmarks/choose.py`, {res['total_seconds'] / 60:.1f} min in all. CPU "
        f"{cpu['model']}, ISA **{cpu['isa']}**, {cpu['available_cpus']} CPUs; load average {res['load'][0]:.1f} -> "
        f"{res['load'][1]:.1f}. {args.imgsz} px, batch 1, {args.seconds:g} s per candidate, interleaved.", "",
        "| model | engine (precision) | candidates img/s (choice run) | chosen | probe: INT8 pays? (PTQ/float) | "
        "agree | confirm: chosen/best, chosen/thin | regression |",
        "|---|---|---|---|---|---|---|---|"]
    for c in res["cells"]:
        d, p, k = c["decision"], c["probe"], c["confirm"]
        cands = ", ".join(f"{r['name']} {r['images_per_s']:.1f}" for r in d["candidates"])
        lines.append(f"| v8{c['size']} | {c['engine']} ({d['engine_precision']}) | {cands} | **{d['chosen']}** | "
                     f"{'yes' if p['int8_pays'] else 'no'} ({p['speedup']:.2f}x) | {'yes' if c['agree'] else 'NO'} | "
                     f"{k['chosen_vs_best']:.3f}, {k['chosen_vs_thin']:.3f} | {'YES' if k['regression'] else 'no'} |")
    n_reg = sum(c["confirm"]["regression"] for c in res["cells"])
    n_agree = sum(c["agree"] for c in res["cells"])
    lines += ["", f"Regressions: {n_reg} of {len(res['cells'])} cells. Probe agreed with the final choice in "
              f"{n_agree} of {len(res['cells'])} cells.", "", "Why, per cell:", ""]
    lines += [f"- v8{c['size']} {c['engine']}: {c['decision']['why']}" for c in res["cells"]]
    lines += ["", "`precision=auto` on this machine (QAT skipped where the probe says INT8 does not pay; the QAT "
              "stage's training time is what that saves):", ""]
    for c in res["cells"]:
        secs = res["qat_seconds"][c["size"]]["pq-tensor" if c["engine"] == "deepsparse" else "pq-channel"]
        lines.append(f"- v8{c['size']} {c['engine']}: QAT {'runs' if c['probe']['int8_pays'] else 'skipped'}"
                     + ("" if c["probe"]["int8_pays"] else f", {secs:.0f} s of QAT training saved")
                     + f"; registered form: {c['decision']['chosen']}")
    if res.get("deepsparse_schemes"):
        lines += ["", "DeepSparse: per-tensor vs per-channel QAT (DeepSparse form of each export):", ""]
        for size, r in res["deepsparse_schemes"].items():
            t, ch = r["pq-tensor"], r["pq-channel"]
            lines.append(f"- v8{size}: per-tensor {t['images_per_s']:.1f} img/s ({(t['native_share'] or 0):.0%} "
                         f"native), per-channel {ch['images_per_s']:.1f} img/s ({(ch['native_share'] or 0):.0%} "
                         f"native): {t['images_per_s'] / ch['images_per_s']:.2f}x")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "choose", help="scratch folder (models, data)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--models", type=lambda s: s.split(","), default=["n", "s"], help="YOLOv8 sizes, e.g. n,s")
    ap.add_argument("--engines", type=lambda s: s.split(","), default=None, help="default: every one installed")
    ap.add_argument("--imgsz", type=int, default=640, help="timing image size")
    ap.add_argument("--train-imgsz", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=32)
    ap.add_argument("--n-val", type=int, default=8)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--dense-epochs", type=int, default=1)
    ap.add_argument("--prune-epochs", type=int, default=2)
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--qat-lr", type=float, default=1e-3)
    ap.add_argument("--channel-sparsity", type=float, default=0.75)
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per candidate (choice and confirm)")
    ap.add_argument("--probe-seconds", type=float, default=3.0)
    ap.add_argument("--gate", action="store_true", help="score candidates on the tiny set (accuracy gate)")
    ap.add_argument("--reuse", action="store_true", help="reuse data/models already in --work")
    ap.add_argument("--suffix", default="", help="result file suffix, e.g. -small (choose-small.md)")
    args = ap.parse_args()
    return run(args)


def run(args) -> int:
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
    built = {size: build(args, work, data, size) for size in args.models}
    load0 = os.getloadavg()[0]
    cells = [cell(args, work, data, size, built[size], engine)
             for size in args.models for engine in (args.engines or engines())]
    ds = {size: deepsparse_schemes(args, work, size, built[size]) for size in args.models
          if "deepsparse" in (args.engines or engines())}
    res = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu_info(),
           "load": (load0, os.getloadavg()[0]), "cells": cells, "deepsparse_schemes": ds,
           "qat_seconds": {s: b["qat_seconds"] for s, b in built.items()}, "args": {k: str(v) for k, v in
                                                                                      vars(args).items()},
           "total_seconds": round(time.time() - t0, 1)}
    write_atomic(args.out / f"choose{args.suffix}.json", json.dumps(res, indent=2, default=str) + "\n")
    md = markdown(res, args)
    write_atomic(args.out / f"choose{args.suffix}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
