"""Generated vs uniform recipe at equal speed (issue 18 must-show), used by sensitivity_targets.py.

The uniform recipe is the generator's own template with every group at one level (same KD, epochs, schedule), so
the only difference is where channels go. Equal speed: the uniform level's thinned model is timed, and the
generated recipe targets exactly that latency; both trained models are exported and timed again, and their
mAP50-95 validated on the full val split.
"""

from __future__ import annotations

import json
from pathlib import Path


def _train_and_score(args, recipe: Path, name: str, out: Path, engine: str) -> dict:
    from sparse_core.export import export_model
    from sparse_core.integrations.ultralytics.run import train, val
    from sparse_core.sensitivity.latency import measure_ms

    s = train(model=args.model, data=args.data, recipe=str(recipe), imgsz=int(args.train_imgsz or 640),
              batch=args.batch, workers=2, project=out / "train", name=name, plots=False, teacher=args.model)
    m = val(s["weights"]["last"], data=args.data)
    export_model(s["weights"]["last"], out / f"deploy_{name}", imgsz=args.imgsz)
    ms = measure_ms(out / f"deploy_{name}" / "model.onnx", engine, args.imgsz, args.seconds)
    return {"map50_95": m["map50_95"], "measured_ms": ms, "weights": s["weights"]["last"]}


def generated_vs_uniform(args, analysis: dict, engine: str, _target: float, out: Path) -> dict:
    from sparse_core.checkpoint import checkpoint_model, load_checkpoint
    from sparse_core.sensitivity import latency as lat
    from sparse_core.sensitivity.generate import recipe_text, solve
    from sparse_core.sensitivity.groups import model_groups

    args.train_imgsz = analysis.get("accuracy_imgsz")
    model = checkpoint_model(load_checkpoint(args.model)).eval()
    g, groups = model_groups(model)
    level = 0.5 if 0.5 in analysis["levels"] else analysis["levels"][len(analysis["levels"]) // 2]
    uniform = {i.gid: level for i in groups}
    path = lat.export_onnx(lat.thinned(model, g, groups, uniform), analysis["imgsz"], out / "uniform_oneshot.onnx")
    uniform_ms = lat.measure_ms(path, engine, analysis["imgsz"], args.seconds)
    plan = solve(analysis, engine, uniform_ms)
    segments = {x["id"]: x["segments"] for x in analysis["groups"]}
    uplan = {"sparsity": uniform, "engine": engine, "dense_ms": analysis["latency"][engine]["dense_ms"],
             "predicted_ms": lat.predict(analysis["latency"][engine], analysis["structure"], segments, uniform),
             "predicted_map_drop": 0.0}
    res = {"uniform_level": level, "uniform_oneshot_ms": uniform_ms, "epochs": args.train_epochs}
    for name, p in (("generated", plan), ("uniform", uplan)):
        recipe = out / f"{name}.yaml"
        recipe.write_text(recipe_text(analysis, p, "analysis.json", args.train_epochs,
                                      max(1, round(0.6 * args.train_epochs)), False, 1, f"{uniform_ms:.2f} ms"))
        res[name] = _train_and_score(args, recipe, name, out, engine)
        print(json.dumps({name: res[name]}), flush=True)
    res["map_gain_points"] = 100 * (res["generated"]["map50_95"] - res["uniform"]["map50_95"])
    res["speed_ratio"] = res["uniform"]["measured_ms"] / res["generated"]["measured_ms"]
    return res
