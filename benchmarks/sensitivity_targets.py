"""Issue 18 must-show figures, reproducible: predicted vs measured latency of generated models for three targets
on each engine, and the generated recipe vs a uniform-width recipe at equal measured speed (same training budget).

    python benchmarks/sensitivity_targets.py --model DENSE.pt --data hard/data.yaml --out runs/sens_bench \
        [--engines onnxruntime,openvino] [--targets 1.5,2,2.5] [--imgsz 640] [--train-epochs 10] [--skip-train]

Step 1 runs ``sparsepipe analyze`` (or reuses OUT/analysis/analysis.json). Step 2, per engine and target: the plan's
per-group sparsities applied one-shot (lowest-magnitude channels removed, as training's final masks would), the
thinned model exported and timed on that engine, all plans and the dense model in the same interleaved rounds;
the error is predicted/measured - 1 (ms) and predicted/measured speedup - 1. Step 3 (unless --skip-train,
benchmarks/sensitivity_training.py): the generated recipe for the uniform-50% plan's predicted latency and that
uniform recipe, both trained with KD from the dense model for the same epochs, timed together; mAP50-95 of both
from `sparsepipe val`. Writes OUT/results.json + .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def latency_check(analysis: dict, model, engines, targets, seconds) -> list[dict]:
    """Per engine: every target's plan thinned one-shot and exported, then all of them and the dense model timed in
    the same interleaved rounds. Two errors: ``error`` compares absolute ms (predicted at analysis time, measured
    now) and so includes any change in machine load since the analysis; ``speedup_error`` compares the predicted
    speedup with the one measured against the dense model in these rounds, which load drift cancels from."""
    from sparse_core.errors import UserError
    from sparse_core.sensitivity import latency as lat
    from sparse_core.sensitivity.generate import solve
    from sparse_core.sensitivity.groups import model_groups

    g, groups = model_groups(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            dense = analysis["latency"][engine]["dense_ms"]
            plans, paths = [], []
            for t in targets:
                try:
                    plan = solve(analysis, engine, dense / t)
                except UserError as err:
                    rows.append({"engine": engine, "target_speedup": t, "unreachable": str(err)})
                    continue
                plans.append((t, plan))
                paths.append(lat.export_onnx(lat.thinned(model, g, groups, plan["sparsity"]), analysis["imgsz"],
                                             Path(tmp) / f"{engine}{t}.onnx"))
            d_path = lat.export_onnx(model, analysis["imgsz"], Path(tmp) / "d.onnx")
            *measured, dense_now = lat.measure_rounds([*paths, d_path], engine, seconds * (len(paths) + 1))
            for (t, plan), ms in zip(plans, measured):
                predicted_speedup, measured_speedup = dense / plan["predicted_ms"], dense_now / ms
                rows.append({"engine": engine, "target_speedup": t, "predicted_ms": plan["predicted_ms"],
                             "measured_ms": ms, "error": plan["predicted_ms"] / ms - 1,
                             "dense_ms_analysis": dense, "dense_ms_now": dense_now,
                             "predicted_speedup": predicted_speedup, "measured_speedup_now": measured_speedup,
                             "speedup_error": predicted_speedup / measured_speedup - 1,
                             "loadavg_1m": os.getloadavg()[0]})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def refit_latency(analysis: dict, model, engines, seconds: float, path: Path) -> dict:
    """Re-measure the latency model of ``analysis`` (accuracy kept) and rewrite it in place."""
    from sparse_core.sensitivity import latency as lat
    from sparse_core.sensitivity.groups import model_groups

    g, groups = model_groups(model)
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            analysis["latency"][engine] = lat.fit(model, g, groups, analysis["structure"], engine, analysis["imgsz"],
                                                  analysis["levels"], Path(tmp), seconds)
    path.write_text(json.dumps(analysis, indent=1) + "\n")
    return analysis


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--engines", default="onnxruntime,openvino")
    p.add_argument("--targets", default="1.5,2,2.5")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--val-images", type=int, default=16)
    p.add_argument("--train-epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--refit-latency", action="store_true", help="redo the analysis' latency part (not accuracy)")
    args = p.parse_args(argv)
    from sparse_core.checkpoint import checkpoint_model, load_checkpoint
    from sparse_core.sensitivity.analyze import analyze

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engines = tuple(args.engines.split(","))
    t0 = time.time()
    if (out / "analysis" / "analysis.json").exists():
        analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    else:
        analysis = analyze(args.model, args.data, str(out / "analysis"), engines, args.imgsz,
                           val_images=args.val_images, seconds=args.seconds)
    model = checkpoint_model(load_checkpoint(args.model)).eval()
    if args.refit_latency:
        analysis = refit_latency(analysis, model, engines, args.seconds, out / "analysis" / "analysis.json")
    targets = [float(x) for x in args.targets.split(",")]
    results = {"analysis_timing": analysis["timing"], "latency": latency_check(analysis, model, engines, targets,
                                                                               args.seconds)}
    if not args.skip_train:
        from benchmarks.sensitivity_training import generated_vs_uniform

        results["accuracy"] = generated_vs_uniform(args, analysis, engines[0], targets[len(targets) // 2], out)
    results["wall_s"] = round(time.time() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["| engine | target | predicted ms | measured ms | error (ms) | dense ms: analysis / same rounds | "
             "predicted speedup | measured speedup | error (speedup) |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['engine']} | {r['target_speedup']:g}x | {r['predicted_ms']:.1f} | {r['measured_ms']:.1f} | "
              f"{100 * r['error']:+.1f}% | {r['dense_ms_analysis']:.1f} / {r['dense_ms_now']:.1f} | "
              f"{r['predicted_speedup']:.2f}x | {r['measured_speedup_now']:.2f}x | {100 * r['speedup_error']:+.1f}% |"
              if "error" in r else f"| {r['engine']} | {r['target_speedup']:g}x | unreachable | | | | | | |"
              for r in results["latency"]]
    acc = results.get("accuracy")
    if acc:
        lines += ["", "| recipe | mAP50-95 (full val) | measured ms (interleaved) |", "|---|---|---|"]
        lines += [f"| {k} | {acc[k]['map50_95']:.3f} | {acc[k]['measured_ms']:.2f} |" for k in ("generated", "uniform")]
        lines += ["", f"generated - uniform: {acc['map_gain_points']:+.1f} mAP50-95 points at a speed ratio "
                  f"(uniform ms / generated ms) of {acc['speed_ratio']:.3f}"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
