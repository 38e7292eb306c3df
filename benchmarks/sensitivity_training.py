"""Generated vs uniform recipe at equal speed (issue 18 must-show), used by sensitivity_targets.py.

The uniform recipe is the generator's own template with every group at one level (same KD, epochs, schedule), so
the only difference is where channels go. Equal speed: the generated recipe targets the uniform plan's latency as
the analysis' latency model predicts it (within 5% of measured on a quiet machine; a lone measurement of the
one-shot uniform model was off by +27% once, which made the two trained models 0.79x apart). Both trained models
are exported and timed again in the same interleaved rounds, and their mAP50-95 validated on the full val split.
A training whose recipe (comments aside) and start model are unchanged is reused from OUT/train.
"""

from __future__ import annotations

import json
from pathlib import Path


def _body(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


def _train_and_score(args, recipe: Path, name: str, out: Path) -> dict:
    from sparse_core.export import export_model
    from sparse_core.integrations.ultralytics.run import train, val

    last = out / "train" / name / "weights" / "last.pt"
    trained_recipe = out / "train" / f"{name}.recipe.yaml"  # what ``last`` was trained with
    reuse = last.is_file() and trained_recipe.is_file() and _body(trained_recipe.read_text()) == _body(
        recipe.read_text())
    if not reuse:
        s = train(model=args.model, data=args.data, recipe=str(recipe), imgsz=int(args.train_imgsz or 640),
                  batch=args.batch, workers=2, project=out / "train", name=name, plots=False, teacher=args.model)
        last = Path(s["weights"]["last"])
        trained_recipe.write_text(recipe.read_text())
    m = val(str(last), data=args.data)
    export_model(str(last), out / f"deploy_{name}", imgsz=args.imgsz)
    return {"map50_95": m["map50_95"], "weights": str(last), "reused_training": reuse}


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
    segments = {x["id"]: x["segments"] for x in analysis["groups"]}
    target_ms = lat.predict(analysis["latency"][engine], analysis["structure"], segments, uniform)
    plan = solve(analysis, engine, target_ms)
    uplan = {"sparsity": uniform, "engine": engine, "dense_ms": analysis["latency"][engine]["dense_ms"],
             "predicted_ms": target_ms, "predicted_map_drop": 0.0}
    res = {"uniform_level": level, "target_ms": target_ms, "epochs": args.train_epochs}
    for name, p in (("generated", plan), ("uniform", uplan)):
        recipe = out / f"{name}.yaml"
        recipe.write_text(recipe_text(analysis, p, "analysis.json", args.train_epochs,
                                      max(1, round(0.6 * args.train_epochs)), False, 1, f"{target_ms:.2f} ms"))
        res[name] = _train_and_score(args, recipe, name, out)
        print(json.dumps({name: res[name]}), flush=True)
    deployed = [out / f"deploy_{name}" / "model.onnx" for name in ("generated", "uniform")]
    gen_ms, uni_ms = lat.measure_rounds(deployed, engine, 2 * args.seconds)
    res["generated"]["measured_ms"], res["uniform"]["measured_ms"] = gen_ms, uni_ms
    res["map_gain_points"] = 100 * (res["generated"]["map50_95"] - res["uniform"]["map50_95"])
    res["speed_ratio"] = uni_ms / gen_ms
    return res
