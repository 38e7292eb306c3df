"""``sparsepipe recipe check``: resolve a recipe and show what it would do, optionally against a model.

With ``--model`` (an Ultralytics yaml such as yolov8n.yaml / yolov8n-seg.yaml, or a .pt checkpoint) every
selector is matched against the model: pruning ``params`` against parameter names, quantization ``ignore`` /
``submodules`` / ``scheme_overrides`` and distillation layer names against module names (or class names where
SparseML allows them). Selectors matching nothing are warnings, errors with ``--strict``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from sparse_core.errors import UserError
from sparse_core.recipe.recipe import Recipe, load_recipe, parse_recipe_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("recipe", help="work with SparseML-style recipes")
    sub = parser.add_subparsers(dest="recipe_command", metavar="SUBCOMMAND")
    sub.required = True
    check = sub.add_parser("check", help="resolve and validate a recipe; with --model, match its selectors")
    check.add_argument("recipe", help="recipe .yaml/.yml or .md (YAML front matter)")
    check.add_argument("--recipe-args", "--recipe_args", dest="recipe_args", default=None, metavar="JSON",
                       help='variable overrides, e.g. \'{"num_epochs": 15}\'')
    check.add_argument("--model", default=None, help="Ultralytics model yaml (yolov8n.yaml, yolov8n-seg.yaml) or .pt")
    check.add_argument("--strict", action="store_true", help="selectors that match nothing are errors")
    check.add_argument("--staged", action="store_true",
                       help="the recipe is trained stage by stage (the pipelines' sparse_train then qat), so channel "
                            "pruning and QAT may share it")
    check.add_argument("--json", action="store_true", help="print one JSON object (last stdout line)")
    check.add_argument("--trust-checkpoint", action="store_true",
                       help="fully unpickle a local .pt the safe loader refuses (only files you trust: it can run code)")
    check.set_defaults(func=run_check)
    resolve = sub.add_parser("resolve", help="print the resolved recipe (overrides applied, eval done) as YAML")
    resolve.add_argument("recipe")
    resolve.add_argument("--recipe-args", "--recipe_args", dest="recipe_args", default=None, metavar="JSON")
    resolve.add_argument("--stage", choices=["sparse", "qat"], default=None, help="only this training stage")
    resolve.add_argument("--json", action="store_true", help="one JSON object {'recipe': YAML text, ...}")
    resolve.set_defaults(func=run_resolve)
    from sparse_core.cli.analyze import add_generate_parser

    add_generate_parser(sub)


def run_resolve(args: argparse.Namespace) -> int:
    recipe = load_recipe(_recipe_path(args.recipe), parse_recipe_args(args.recipe_args))
    if args.stage:
        recipe = recipe.split(args.stage)
    if args.json:
        print(json.dumps({"recipe": recipe.to_yaml(), "stage": args.stage}))
    else:
        sys.stdout.write(recipe.to_yaml())
    return 0


def _recipe_path(text: str) -> Path:
    return Path(text)  # the CLI takes files only; raw text is for the Python API


def load_model(spec: str):
    """A torch model for selector matching: Ultralytics yaml (built, random init) or a checkpoint."""
    import torch  # noqa: F401  (heavy; only with --model)

    from sparse_core.safe_load import guard_ultralytics

    guard_ultralytics()  # a model yaml is data too: Ultralytics parses its activation without eval()

    if spec.endswith((".pt", ".pth")):
        from sparse_core.checkpoint import checkpoint_model, load_checkpoint

        return checkpoint_model(load_checkpoint(spec))  # safe load; run_check scopes --trust-checkpoint
    if not spec.endswith((".yaml", ".yml")):
        raise UserError(f"--model: {spec}: expected an Ultralytics model .yaml (e.g. yolov8n.yaml) or a .pt checkpoint")
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    cls = SegmentationModel if "-seg" in Path(spec).stem else DetectionModel
    try:
        return cls(spec, verbose=False)
    except FileNotFoundError:
        raise UserError(f"--model: {spec}: model yaml not found (not a file, not an Ultralytics built-in)") from None
    except Exception as err:  # a yaml that is not a model definition
        raise UserError(f"--model: {spec}: cannot build the model ({type(err).__name__}: {str(err)[:150]})") from None


def _modules_match(name: str, modules: dict[str, Any], by_class: bool) -> list[str]:
    """Module names a quantization / distillation name refers to (class names too where ``by_class``)."""
    if name in modules:
        return [name]
    add_input = re.fullmatch(r"(.+)\.add_input_\d+", name)  # SparseML: the inputs of a residual add
    if add_input and add_input.group(1) in modules and getattr(modules[add_input.group(1)], "add", False):
        return [name]
    if by_class:
        return [n for n, m in modules.items() if type(m).__name__ == name]
    return []


def selector_report(recipe: Recipe, model) -> tuple[list[dict], list[str]]:
    """Per modifier {field: {selector: n_matches}} and the warnings for selectors matching nothing."""
    from sparse_core.modifiers.selectors import resolve_params
    from sparse_core.recipe.schemas import GMPruningModifier

    modules = dict(model.named_modules(remove_duplicate=False))
    reports, warnings = [], []
    for mod in recipe.modifiers:
        where = f"{recipe.path or '<recipe>'}:{mod.line}: {mod.type_name}"
        fields: dict[str, dict[str, int]] = {}
        if mod.kind == "pruning":
            pairs = mod.selector_sparsities() if isinstance(mod, GMPruningModifier) else [
                (s, None) for s in ([mod.params] if isinstance(mod.params, str) else mod.params)]
            field = "final_sparsity" if isinstance(getattr(mod, "final_sparsity", None), dict) else "params"
            fields[field] = {sel: len(resolve_params(sel, model, where, strict=False)) for sel, _ in pairs}
        checks = {
            "ignore": True, "submodules": False, "scheme_overrides": False, "exclude_module_types": True,
            "custom_quantizable_module_types": None, "student_layer_names": False, "teacher_layer_names": None,
        }
        for field, by_class in checks.items():
            names = getattr(mod, field, None)
            if not names or by_class is None:  # custom types / teacher layers name things outside this model
                continue
            fields[field] = {n: len(_modules_match(n, modules, by_class)) for n in names}
        for field, counts in fields.items():
            for sel, count in counts.items():
                if count == 0:
                    warnings.append(f"{where}: {field}: '{sel}' matches nothing in the model")
        reports.append(fields)
    return reports, warnings


def _fmt(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 70 else f"{text[:60]}… ({len(value)} entries)"


def run_check(args: argparse.Namespace) -> int:
    recipe = load_recipe(_recipe_path(args.recipe), parse_recipe_args(args.recipe_args), staged=args.staged)
    reports: list[dict] = [{} for _ in recipe.modifiers]
    warnings: list[str] = []
    model_info = None
    if args.model:
        from sparse_core.safe_load import trusting

        with trusting([args.model], args.trust_checkpoint):
            model = load_model(args.model)
        reports, warnings = selector_report(recipe, model)
        from sparse_core.modifiers.selectors import prunable_names

        model_info = {"model": args.model, "params": sum(1 for _ in model.parameters()),
                      "prunable": len(prunable_names(model))}
        if args.strict and warnings:
            raise UserError(warnings[0] + (f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else "")
                            + " [--strict]")
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    mods = []
    for mod, report in zip(recipe.modifiers, reports):
        mods.append({"type": mod.type_name, "group": mod.group, "line": mod.line,
                     "start_epoch": getattr(mod, "start_epoch", None), "end_epoch": getattr(mod, "end_epoch", None),
                     "fields": mod.fields(), "matches": report})
    if args.json:
        out = {"ok": True, "recipe": recipe.path, "sha256": recipe.sha256, "version": recipe.version,
               "epochs": recipe.num_epochs(), "args": recipe.args, "variables": recipe.variables,
               "modifiers": mods, "model": model_info, "warnings": warnings}
        print(json.dumps(out, default=str))
        return 0
    print(f"recipe {recipe.path}  sha256 {recipe.sha256[:12]}  version {recipe.version}  epochs {recipe.num_epochs()}")
    if recipe.variables:
        print("variables: " + ", ".join(f"{k}={v}{' (override)' if k in recipe.args else ''}"
                                        for k, v in recipe.variables.items()))
    print(f"{'line':>5}  {'group':<34} {'modifier':<30} {'epochs':<14} settings")
    for m in mods:
        epochs = "" if m["start_epoch"] is None else f"{m['start_epoch']:g}"
        if m["end_epoch"] is not None and m["end_epoch"] >= 0:
            epochs += f" -> {m['end_epoch']:g}"
        settings = {k: v for k, v in m["fields"].items() if k not in ("start_epoch", "end_epoch")}
        print(f"{m['line']:>5}  {m['group']:<34} {m['type']:<30} {epochs:<14} "
              + "; ".join(f"{k}={_fmt(v)}" for k, v in settings.items()))
        for field, counts in m["matches"].items():
            total = sum(counts.values())
            missing = [s for s, c in counts.items() if c == 0]
            print(f"{'':>7}{field}: {len(counts)} selectors -> {total} matches"
                  + (f"; {len(missing)} match nothing" if missing else ""))
    if model_info:
        print(f"model {model_info['model']}: {model_info['params']} params, {model_info['prunable']} prunable weights; "
              f"{len(warnings)} warnings")
    print("ok")
    return 0
