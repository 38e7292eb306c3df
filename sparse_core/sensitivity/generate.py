"""``sparsepipe recipe generate``: per-group channel sparsities that meet a latency target at the least predicted
accuracy loss, written as a SparseML-style recipe.

Solver: greedy on the marginal ratio (accuracy cost added / predicted milliseconds saved), moving one group to any
of its higher levels per step until the calibrated latency model meets the target. Why not a knapsack DP over
groups x levels: latency is not additive over groups (a conv's time scales with kept inputs x kept outputs, and
its input and output channels often belong to different groups), so a DP would optimise a different function than
the one the target is checked against; the greedy step re-evaluates the full predictor each time (51 groups x 3
levels on YOLOv8n: well under a second). Accuracy costs are the one-shot mAP50-95 drops of the analysis, made
monotone over levels, assumed additive over groups (the recipe header says so); val-loss increase breaks ties.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparse_core.errors import UserError
from sparse_core.sensitivity.analyze import VERSION
from sparse_core.sensitivity.latency import predict

_TIE = 1e-3  # weight of the relative val-loss increase next to the mAP drop (tie-break among zero-drop moves)


def load_analysis(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--analysis: {path}: not found; expected the analysis.json of sparsepipe analyze")
    try:
        a = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--analysis: {path}: not JSON ({err})") from None
    if not isinstance(a, dict) or a.get("version") != VERSION or not {"groups", "latency", "structure"} <= set(a):
        raise UserError(f"--analysis: {path}: not an analysis.json of version {VERSION} (needs groups, latency, "
                        "structure)")
    return a


def _costs(a: dict) -> dict[str, dict[float, float]]:
    """Per group: level -> accuracy cost (mAP drop, monotone non-decreasing over levels, plus the tie-break)."""
    base = max(abs(a["dense"]["val_loss"]), 1e-9)
    out = {}
    for g in a["groups"]:
        run, costs = 0.0, {0.0: 0.0}
        for lv in a["levels"]:
            r = g["accuracy"][f"{lv:g}"]
            run = max(run, max(r["map_drop"], 0.0) + _TIE * max(r["loss_increase"], 0.0) / base)
            costs[lv] = run
        out[g["id"]] = costs
    return out


def solve(a: dict, engine: str, target_ms: float) -> dict[str, Any]:
    """Greedy marginal-ratio choice of a level per group (see module docstring)."""
    lat, struct = a["latency"][engine], a["structure"]
    segments = {g["id"]: g["segments"] for g in a["groups"]}
    costs = _costs(a)
    choice = {g["id"]: 0.0 for g in a["groups"]}
    current = predict(lat, struct, segments, choice)
    while current > target_ms:
        best = None
        for gid, lv0 in choice.items():
            for lv in (x for x in a["levels"] if x > lv0):
                trial = predict(lat, struct, segments, {**choice, gid: lv})
                saved = current - trial
                if saved <= 1e-9:
                    continue
                ratio = (costs[gid][lv] - costs[gid][lv0]) / saved
                if best is None or ratio < best[0]:
                    best = (ratio, gid, lv, trial)
        if best is None:
            raise UserError(f"target {target_ms:.2f} ms on {engine} is out of reach: the analysis levels give at "
                            f"best {current:.2f} ms (dense {lat['dense_ms']:.2f} ms); use a gentler target or "
                            "analyze with higher --levels")
        _, gid, lv, current = best
        choice[gid] = lv
    choice, current = _give_back(a, lat, struct, segments, costs, choice, target_ms)
    drop = sum(costs[gid][lv] for gid, lv in choice.items())
    return {"sparsity": choice, "predicted_ms": current, "dense_ms": lat["dense_ms"],
            "predicted_map_drop": drop, "engine": engine}


def _give_back(a, lat, struct, segments, costs, choice, target_ms):
    """Undo overshoot: step groups back to a lower level while the target still holds, largest saving first."""
    current = predict(lat, struct, segments, choice)
    while True:
        best = None
        for gid, lv0 in choice.items():
            for lv in (x for x in [0.0] + a["levels"] if x < lv0):
                trial = predict(lat, struct, segments, {**choice, gid: lv})
                gain = costs[gid][lv0] - costs[gid][lv]
                if trial <= target_ms and gain > 0 and (best is None or gain > best[0]):
                    best = (gain, gid, lv, trial)
        if best is None:
            return choice, current
        _, gid, lv, current = best
        choice[gid] = lv


_GMP = ["    init_sparsity: 0.0", "    start_epoch: eval(pruning_start_epoch)",
        "    end_epoch: eval(pruning_end_epoch)",
        "    update_frequency: 0.5", "    inter_func: cubic", "    leave_enabled: True", "    mask_type: filter"]


def _lr(start: str, end: str, init: str, final: str, func: str) -> list[str]:
    """An LR schedule line set. The template is the shipped structured_kd recipes': a constant LR while channels go,
    cosine annealing after, KD on outputs and on the neck features the head reads. Measured (hard set, YOLOv8n,
    12 epochs, one generated plan): 0.291 mAP50-95 trained with structured_kd_50's modifiers vs 0.211 with
    Ultralytics' default optimizer and output KD only (benchmarks/results/sensitivity_hard.md)."""
    return ["  - !LearningRateFunctionModifier", f"    start_epoch: {start}", f"    end_epoch: {end}",
            f"    lr_func: {func}", f"    init_lr: eval({init})", f"    final_lr: eval({final})"]


def _sha256(path: str) -> str:
    from sparse_core.tracking.lineage import file_sha256

    return file_sha256(path) if Path(path).is_file() else "unknown"


_PROVENANCE = {"sparsepipe.recipe_analysis_sha256": "# analysis sha256 ", "sparsepipe.recipe_target": "# target: ",
               "sparsepipe.recipe_prediction": "# predicted latency on "}


def provenance(recipe_text: str) -> dict[str, str]:
    """Lineage tags read back from a generated recipe's header (empty for any other recipe)."""
    lines = recipe_text.splitlines()
    if not lines or not lines[0].startswith("# Generated by sparsepipe recipe generate"):
        return {}
    tags = {}
    for key, prefix in _PROVENANCE.items():
        hit = next((ln[len(prefix):].strip() for ln in lines if ln.startswith(prefix)), None)
        if hit:
            tags[key] = hit[:250]
    return tags


def _flow(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


def recipe_text(a: dict, plan: dict, analysis_path: str, epochs: int, pruning_end: int, qat: bool,
                qat_epochs: int, target: str) -> str:
    """The recipe YAML: header with the prediction, structured GMP per group, the LR/KD template of the shipped
    structured_kd recipes (see ``_lr``), optional QAT stage."""
    by_level: dict[float, list[str]] = {}
    for g in a["groups"]:
        s = plan["sparsity"][g["id"]]
        if s > 0:
            by_level.setdefault(s, []).extend(f"{c}.weight" for c in g["convs"])
    if not by_level:
        raise UserError(f"{target}: already met by the dense model ({plan['dense_ms']:.2f} ms predicted); nothing "
                        "to prune")
    total = epochs + (qat_epochs if qat else 0)
    speed = plan["dense_ms"] / plan["predicted_ms"]
    lines = [
        f"# Generated by sparsepipe recipe generate from {analysis_path}",
        f"# analysis sha256 {_sha256(analysis_path)}",
        f"# model {a['model']} (sha256 {a['model_sha256'][:12]}), data {a['data']}",
        f"# target: {target}",
        f"# predicted latency on {plan['engine']} at {a['imgsz']}px: {plan['predicted_ms']:.2f} ms "
        f"(dense {plan['dense_ms']:.2f} ms, {speed:.2f}x)",
        f"# predicted mAP50-95 drop before fine-tuning: {100 * plan['predicted_map_drop']:.2f} points (sum of the "
        "one-shot per-group drops measured by analyze; fine-tuning with KD recovers part of it)",
        "# solver: greedy marginal accuracy-cost per predicted ms saved (latency is not additive over groups)",
        f"# groups pruned: {sum(1 for s in plan['sparsity'].values() if s > 0)} of {len(a['groups'])}",
        "# train: sparsepipe train --model DENSE.pt --teacher DENSE.pt (or self) --recipe THIS"
        + (" (QAT stage: the pipeline splits it; see docs/structured.md)" if qat else ""),
        "version: 1.1.0",
        f"num_epochs: {total}",
        "pruning_start_epoch: 0",
        f"pruning_end_epoch: {pruning_end}",
    ]
    if qat:
        lines.append(f"qat_start_epoch: {epochs}")
    kd_end = "eval(qat_start_epoch)" if qat else "eval(num_epochs)"
    lines += ["sparsity_scale: 1.0  # < 1: every group's sparsity scaled down (train --max-map-drop backs off so)",
              "prune_lr: 0.005", "final_lr: 0.0001", "", "training_modifiers:", "  - !EpochRangeModifier",
              "    start_epoch: 0", "    end_epoch: eval(num_epochs)", *_lr("0", "eval(pruning_end_epoch)", "prune_lr",
                                                                          "prune_lr", "linear"),
              *_lr("eval(pruning_end_epoch)", kd_end, "prune_lr", "final_lr", "cosine")]
    if qat:
        lines += _lr("eval(qat_start_epoch)", "eval(num_epochs)", "final_lr", "final_lr", "linear")
    lines += ["", "pruning_modifiers:"]
    for s in sorted(by_level):
        lines += ["  - !GMPruningModifier", f"    params: {_flow(by_level[s])}",
                  f"    final_sparsity: eval({s:g} * sparsity_scale)", *_GMP]
    lines += ["", "distillation_modifiers:", "  - !DistillationModifier", "    start_epoch: 0",
              f"    end_epoch: {kd_end}", "    hardness: 0.5", "    temperature: 2.0"]
    if a.get("head_inputs"):  # neck features the head reads, imitated as in the shipped structured_kd recipes
        lines += ["  - !PerLayerDistillationModifier", "    start_epoch: 0", f"    end_epoch: {kd_end}",
                  "    gain: 0.5", f"    student_layer_names: {_flow(a['head_inputs'])}"]
    if qat:
        lines += ["", "quantization_modifiers:", "  - !QuantizationModifier", "    start_epoch: eval(qat_start_epoch)",
                  "    ignore: ['Upsample', 'Concat', 'model.22.dfl.conv']"]
    return "\n".join(lines) + "\n"


def generate(analysis: str, out: str, target_speedup: float | None = None, target_latency_ms: float | None = None,
             engine: str | None = None, qat: bool = False, epochs: int = 10, pruning_end: int | None = None,
             qat_epochs: int = 3) -> dict[str, Any]:
    """Solve and write the recipe to ``out`` (atomically); returns the plan with the recipe path."""
    from sparse_core.atomic import atomic_file
    from sparse_core.recipe.recipe import load_recipe

    a = load_analysis(analysis)
    engine = engine or next(iter(a["latency"]))
    if engine not in a["latency"]:
        raise UserError(f"--engine: {engine}: the analysis has latency for {', '.join(a['latency'])} only")
    if (target_speedup is None) == (target_latency_ms is None):
        raise UserError("recipe generate: give exactly one of --target-speedup and --target-latency-ms")
    if (target_speedup is not None and target_speedup <= 1) or (target_latency_ms is not None
                                                                 and target_latency_ms <= 0):
        raise UserError("recipe generate: expected --target-speedup > 1 or --target-latency-ms > 0")
    if epochs < 2 or qat_epochs < 1:
        raise UserError("recipe generate: expected --epochs >= 2 and --qat-epochs >= 1")
    dense = a["latency"][engine]["dense_ms"]
    target_ms = dense / target_speedup if target_speedup else target_latency_ms
    target = (f"{target_speedup:g}x speedup ({target_ms:.2f} ms)" if target_speedup
              else f"{target_latency_ms:g} ms") + f" on {engine}"
    plan = solve(a, engine, target_ms)
    pruning_end = pruning_end if pruning_end is not None else max(1, round(epochs * 0.6))
    if not 1 <= pruning_end < epochs:
        raise UserError(f"recipe generate: pruning must end at an epoch in [1, {epochs - 1}] (before the last "
                        f"epoch, so the final masks are applied and fine-tuned); got --pruning-end {pruning_end} "
                        f"with --epochs {epochs}")
    text = recipe_text(a, plan, analysis, epochs, pruning_end, qat, qat_epochs, target)
    load_recipe(text, staged=True)  # what we write must load as a recipe (the pipelines train it stage by stage)
    with atomic_file(out) as tmp:
        Path(tmp).write_text(text)
    return {**plan, "recipe": str(out), "target_ms": target_ms, "target": target}
