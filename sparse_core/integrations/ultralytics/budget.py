"""Accuracy budget for sparse training (``train --max-map-drop P``): attempts with gentler targets until the
trained model's mAP50-95 is within P points of the dense model's; never ends silently over budget.

A wrapper around ``train()`` rather than a hook inside the trainer: each attempt is a whole, ordinary run (its own
folder and MLflow child run), which keeps the trainer untouched. Attempt k trains from the same start model with
the recipe's sparsity scaled by ``BACKOFF[k]`` (the recipe's ``sparsity_scale`` variable, which generated recipes
have, or else its ``final_sparsity`` variable), and is judged on its final ``last.pt`` (thinned: what would ship),
not ``best.pt`` (with GMP, best is often an epoch before pruning finished). When every attempt is over budget the
result says so and the command exits 3 (no model is presented as within budget); the dense model stays the answer.
"""

from __future__ import annotations

from typing import Any

from sparse_core.errors import UserError

BACKOFF = (1.0, 0.6, 0.3)
OVER_BUDGET_EXIT = 3


def scaled_recipe_args(recipe: str, recipe_args: dict | str | None, scale: float, zoo: str | None) -> dict:
    """recipe_args with the sparsity target scaled by ``scale`` (``recipe``: a path or recipe text)."""
    from sparse_core.recipe.recipe import load_recipe, parse_recipe_args

    args = parse_recipe_args(recipe_args) if isinstance(recipe_args, str) or recipe_args is None else dict(recipe_args)
    rec = load_recipe(recipe, args, staged=True) if not str(recipe).startswith("zoo:") else None
    variables = rec.variables if rec is not None else {}
    if "sparsity_scale" in variables:
        return {**args, "sparsity_scale": float(variables["sparsity_scale"]) * scale}
    if isinstance(variables.get("final_sparsity"), (int, float)):
        return {**args, "final_sparsity": float(variables["final_sparsity"]) * scale}
    raise UserError(f"--max-map-drop: {recipe}: the recipe has no sparsity_scale or numeric final_sparsity variable "
                    "to back off with; expected a recipe from `sparsepipe recipe generate` or one with final_sparsity")


def judge(k: int, scale: float, got: float, dense_map: float, max_map_drop: float, tracker, log) -> dict:
    """One attempt's verdict, logged to ``tracker`` at step ``k`` (the MLflow metric history shows every attempt)."""
    drop = 100 * (dense_map - got)
    ok = got >= dense_map - max_map_drop / 100
    tracker.log_metrics({"budget.map50_95": got, "budget.drop_points": drop, "budget.scale": scale,
                         "budget.within_budget": float(ok)}, step=k)
    log(f"budget: attempt {k} (sparsity x{scale:g}): mAP50-95 {got:.4f}, drop {drop:.2f} points (budget "
        f"{max_map_drop:g}): {'within' if ok else 'over'} budget")
    return {"attempt": k, "scale": scale, "map50_95": got, "drop_points": drop, "within_budget": ok}


def stage_within_budget(max_map_drop: float, dense_map: float, train_attempt, tracker, log=print,
                        backoff: tuple[float, ...] = BACKOFF) -> dict[str, Any]:
    """The pipelines' budget loop (``sparse_train`` with ``max_map_drop`` >= 0): ``train_attempt(k, scale)`` trains
    one attempt and returns its result (``map50_95`` of the stage's end model); the first attempt within budget is
    returned with a ``budget`` record. Every attempt over budget raises: a pipeline never ends silently over it."""
    if not max_map_drop >= 0:
        raise UserError(f"max_map_drop: {max_map_drop}: expected points of mAP50-95 >= 0 (e.g. 1.0)")
    tracker.log_params({"budget.max_map_drop_points": max_map_drop, "budget.dense_map50_95": dense_map,
                        "budget.backoff": list(backoff)})
    attempts = []
    for k, scale in enumerate(backoff):
        result = train_attempt(k, scale)
        attempts.append(judge(k, scale, float(result.get("map50_95", 0.0)), dense_map, max_map_drop, tracker, log))
        if attempts[-1]["within_budget"]:
            budget = {"status": "within_budget", "dense_map50_95": dense_map, "max_map_drop_points": max_map_drop,
                      "attempts": attempts}
            tracker.set_tags({"budget.status": "within_budget", "budget.attempts": str(len(attempts))})
            return {**result, "budget": budget}
    tracker.set_tags({"budget.status": "over_budget", "budget.attempts": str(len(attempts))})
    best = max(a["map50_95"] for a in attempts)
    raise UserError(f"over budget: {len(attempts)} attempts (sparsity x{', x'.join(f'{s:g}' for s in backoff)}) all "
                    f"lost more than {max_map_drop:g} mAP50-95 points against the dense model's {dense_map:.4f} "
                    f"(best {best:.4f}); keep the dense model or allow a larger max_map_drop")


def recipe_within_budget(recipe, model: str, data_yaml: str, imgsz: int, out, run_stage, tracker) -> dict:
    """A pipeline step's budget loop: ``recipe`` (steps.RecipeSettings with ``max_map_drop``) trained by
    ``run_stage(resolved_recipe, folder)`` with its sparsity scaled by BACKOFF, each attempt in a folder beside
    ``out``; the first within budget becomes ``out``. The result's ``budget`` records every attempt (the step
    writes it into ``out/summary.json`` with the other lineage it carries)."""
    import json
    import os
    import shutil
    from dataclasses import replace
    from pathlib import Path

    from sparse_core.integrations.ultralytics.run import val

    out = Path(out)
    dense = float(val(model, data=data_yaml, imgsz=imgsz)["map50_95"])
    folders = {}

    def attempt(k: int, scale: float) -> dict:
        args = scaled_recipe_args(recipe.recipe, recipe.recipe_args, scale, recipe.zoo or None)
        folders[k] = out.with_name(f".{out.name}.attempt{k}")
        return run_stage(replace(recipe, recipe_args=json.dumps(args)).load(), folders[k])

    try:
        result = stage_within_budget(float(recipe.max_map_drop), dense, attempt, tracker)
        if out.exists():
            shutil.rmtree(out)
        os.replace(folders[len(result["budget"]["attempts"]) - 1], out)
    finally:  # over budget or interrupted: no attempt folder is left behind
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
    return result


def budget_tags(summary: dict) -> dict[str, str]:
    """The registered model's tag for the budget it was trained under (none when it had none)."""
    budget = summary.get("budget")
    if not isinstance(budget, dict) or not budget.get("attempts"):
        return {}
    last = budget["attempts"][-1]
    return {"sparsepipe.budget": f"{budget.get('status')}: max {budget.get('max_map_drop_points')} points, "
                                 f"{len(budget['attempts'])} attempt(s), kept sparsity x{last['scale']:g} "
                                 f"(drop {last['drop_points']:.2f} points)"}


def train_with_budget(max_map_drop: float, model: str, data: str, recipe: str, dense_map: float | None = None,
                      backoff: tuple[float, ...] = BACKOFF, mlflow: str | None = None, experiment: str = "sparsepipe",
                      name: str = "train", log=print, **train_kwargs) -> dict[str, Any]:
    """Train with ``recipe`` under the budget; returns the chosen attempt's summary plus every attempt."""
    from sparse_core.integrations.ultralytics.run import train, val
    from sparse_core.tracking import Tracker
    from sparse_core.tracking.connection import resolve_uri

    if not max_map_drop >= 0:
        raise UserError(f"--max-map-drop: {max_map_drop}: expected points of mAP50-95 >= 0 (e.g. 1.0)")
    imgsz = train_kwargs.get("imgsz", 640)
    if dense_map is None:
        dense_map = float(val(model, data=data, imgsz=imgsz)["map50_95"])
    parent = Tracker.start(resolve_uri(mlflow), experiment=experiment, run_name=f"{name}-budget")
    parent.log_params({"budget.max_map_drop_points": max_map_drop, "budget.dense_map50_95": dense_map,
                       "budget.backoff": list(backoff), "budget.recipe": recipe})
    attempts, chosen = [], None
    base_args = train_kwargs.pop("recipe_args", None)
    for k, scale in enumerate(backoff):
        args = scaled_recipe_args(recipe, base_args, scale, train_kwargs.get("zoo"))
        summary = train(model=model, data=data, recipe=recipe, recipe_args=args, mlflow=mlflow, experiment=experiment,
                        name=f"{name}-attempt{k}", parent_run_id=parent.run_id, **train_kwargs)
        got = float(val(summary["weights"]["last"], data=data, imgsz=imgsz)["map50_95"])
        attempt = judge(k, scale, got, dense_map, max_map_drop, parent, log)
        attempts.append({**attempt, "save_dir": summary["save_dir"], "mlflow_run_id": summary.get("mlflow_run_id")})
        if attempt["within_budget"]:
            chosen = {**summary, "map50_95": got}
            break
    status = "within_budget" if chosen else "over_budget"
    parent.set_tags({"budget.status": status, "budget.attempts": str(len(attempts))})
    parent.finish()
    out = chosen or {"map50_95": dense_map, "weights": None}
    return {**out, "budget": {"status": status, "dense_map50_95": dense_map, "max_map_drop_points": max_map_drop,
                              "attempts": attempts, "mlflow_run_id": parent.run_id}}


def run_budget_cli(args, print_summary) -> int:
    """``sparsepipe train --max-map-drop P``: exit 0 within budget, 3 when every attempt was over it."""
    if args.resume or not args.recipe:
        raise UserError("--max-map-drop needs --model, --data and --recipe (not --resume)")
    result = train_with_budget(args.max_map_drop, args.model, args.data, args.recipe, recipe_args=args.recipe_args,
                               mlflow=args.mlflow, experiment=args.experiment, name=args.name,
                               epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, workers=args.workers,
                               gradient_accum_steps=args.gradient_accum_steps, project=args.project, seed=args.seed,
                               zoo=args.zoo, plots=args.plots, device=args.device, teacher=args.teacher)
    print_summary(result, args.json)
    if result["budget"]["status"] != "within_budget":
        import sys

        print(f"sparsepipe train: over budget: no attempt kept mAP50-95 within {args.max_map_drop:g} points of the "
              f"dense model ({len(result['budget']['attempts'])} attempts); keep the dense model", file=sys.stderr)
        return OVER_BUDGET_EXIT
    return 0
