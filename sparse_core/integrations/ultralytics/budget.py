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


def _scaled_args(recipe: str, recipe_args: dict | str | None, scale: float, zoo: str | None) -> dict:
    """recipe_args with the sparsity target scaled by ``scale``."""
    from sparse_core.recipe.recipe import load_recipe, parse_recipe_args

    args = parse_recipe_args(recipe_args) if isinstance(recipe_args, str) or recipe_args is None else dict(recipe_args)
    rec = load_recipe(recipe, args) if not str(recipe).startswith("zoo:") else None
    variables = rec.variables if rec is not None else {}
    if "sparsity_scale" in variables:
        return {**args, "sparsity_scale": float(variables["sparsity_scale"]) * scale}
    if isinstance(variables.get("final_sparsity"), (int, float)):
        return {**args, "final_sparsity": float(variables["final_sparsity"]) * scale}
    raise UserError(f"--max-map-drop: {recipe}: the recipe has no sparsity_scale or numeric final_sparsity variable "
                    "to back off with; expected a recipe from `sparsepipe recipe generate` or one with final_sparsity")


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
    floor = dense_map - max_map_drop / 100
    parent = Tracker.start(resolve_uri(mlflow), experiment=experiment, run_name=f"{name}-budget")
    parent.log_params({"budget.max_map_drop_points": max_map_drop, "budget.dense_map50_95": dense_map,
                       "budget.backoff": list(backoff), "budget.recipe": recipe})
    attempts, chosen = [], None
    base_args = train_kwargs.pop("recipe_args", None)
    for k, scale in enumerate(backoff):
        args = _scaled_args(recipe, base_args, scale, train_kwargs.get("zoo"))
        summary = train(model=model, data=data, recipe=recipe, recipe_args=args, mlflow=mlflow, experiment=experiment,
                        name=f"{name}-attempt{k}", parent_run_id=parent.run_id, **train_kwargs)
        got = float(val(summary["weights"]["last"], data=data, imgsz=imgsz)["map50_95"])
        ok = got >= floor
        attempts.append({"attempt": k, "scale": scale, "map50_95": got, "drop_points": 100 * (dense_map - got),
                         "within_budget": ok, "save_dir": summary["save_dir"],
                         "mlflow_run_id": summary.get("mlflow_run_id")})
        parent.log_metrics({"budget.map50_95": got, "budget.drop_points": 100 * (dense_map - got),
                            "budget.scale": scale, "budget.within_budget": float(ok)}, step=k)
        log(f"budget: attempt {k} (sparsity x{scale:g}): mAP50-95 {got:.4f}, drop {100 * (dense_map - got):.2f} "
            f"points (budget {max_map_drop:g}): {'within' if ok else 'over'} budget")
        if ok:
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
