"""Recipe = SparseML recipe text resolved into validated modifier objects.

Resolution order (SparseML's): read YAML / Markdown front matter → top-level variables → apply ``recipe_args``
overrides to the variables → evaluate ``eval(expr)`` variables (they may use each other) → evaluate every
``eval(expr)`` inside modifiers → validate each modifier strictly. Any top-level list whose key ends in
``modifiers`` is a modifier group (so the seeds' misspelled ``knowledge_disitillation_modifiers`` works).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sparse_core.errors import UserError
from sparse_core.recipe import schemas
from sparse_core.recipe.variables import Variables
from sparse_core.recipe.yaml_source import (MAX_BYTES, LineDict, LineList, check_nesting, front_matter, load_yaml,
                                            looks_like_markdown)
from sparse_core.recipe.rules import check_rules

Modifier = schemas.Modifier
PRUNING_TYPES = ("GMPruningModifier", "MagnitudePruningModifier", "GlobalMagnitudePruningModifier")
LR_TYPES = ("SetLearningRateModifier", "LearningRateFunctionModifier", "LearningRateModifier")
EPOCH_FIELDS = ("start_epoch", "end_epoch", "disable_quantization_observer_epoch", "freeze_bn_stats_epoch")


def parse_recipe_args(text: str | dict | None) -> dict:
    """``--recipe-args`` JSON (or an already-parsed dict) → dict; bad JSON is a UserError."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        check_nesting(text, "--recipe-args")
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(
            f"--recipe-args: not valid JSON ({err.msg} at column {err.colno}); "
            'expected an object such as \'{"num_epochs": 15}\''
        ) from None
    except (ValueError, RecursionError) as err:  # a 5,000-digit number, or [[[[... deeper than the parser goes
        raise UserError(f"--recipe-args: not usable JSON ({str(err)[:100] or 'nested too deeply'}); "
                        'expected an object such as \'{"num_epochs": 15}\'') from None
    if not isinstance(value, dict):
        raise UserError(f"--recipe-args: got a JSON {type(value).__name__}; expected an object such as '{{\"num_epochs\": 15}}'")
    check_nesting(value, "--recipe-args")
    return value


def _read_source(source: str | os.PathLike, zoo: str | None = None) -> tuple[str | None, str]:
    """(path or None, text) of a recipe source, the one place sources are told apart: a ``zoo:`` stub (fetched
    into the zoo cache, ``zoo`` or ``$SPARSEPIPE_ZOO``), an existing path, else raw text when it has ':' or a
    newline, else a missing file."""
    if isinstance(source, str) and source.startswith("zoo:") and "\n" not in source:
        from sparse_core.zoo import resolve_recipe

        source = str(resolve_recipe(source, zoo=zoo))
    if isinstance(source, str) and not os.path.exists(source) and (":" in source or "\n" in source):
        return None, source
    path = Path(source)
    if not path.exists():
        raise UserError(f"{path}: recipe file not found")
    if not path.is_file():
        raise UserError(f"{path}: is a directory; expected a recipe .yaml/.yml/.md file")
    if path.stat().st_size > 4 * MAX_BYTES:  # checked again on the text; this only avoids reading a huge file
        raise UserError(f"{path}: recipe is {path.stat().st_size:,} bytes; expected at most {MAX_BYTES:,}")
    try:
        return str(path), path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; expected a YAML or Markdown recipe") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


class Recipe:
    """A resolved recipe: ``variables`` (overrides applied, evaluated) and ``modifiers`` in file order."""

    def __init__(self, path: str | None, original_text: str, args: dict, variables: dict,
                 modifiers: list[Modifier], version: Any = None):
        self.path = path
        self.original_text = original_text
        self.args = dict(args)
        self.variables = variables
        self.modifiers = modifiers
        self.version = version
        self.sha256 = hashlib.sha256(original_text.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return f"Recipe({self.path or '<text>'}, {len(self.modifiers)} modifiers, epochs={self.num_epochs()})"

    # ------------------------------------------------------------------------------------------------ queries

    def of_type(self, *names: str) -> list[Modifier]:
        """Modifiers whose type name is one of ``names`` (file order)."""
        return [m for m in self.modifiers if m.type_name in names]

    def of_kind(self, *kinds: str) -> list[Modifier]:
        """Modifiers whose executor kind ('epoch', 'lr', 'wd', 'pruning', 'quantization', 'distillation') matches."""
        return [m for m in self.modifiers if m.kind in kinds]

    def num_epochs(self) -> float | None:
        """Training length: EpochRangeModifier end_epoch (max), else the latest end_epoch of any modifier."""
        ranges = self.of_type("EpochRangeModifier")
        if ranges:
            return max(m.end_epoch for m in ranges)
        ends = [getattr(m, "end_epoch", -1.0) for m in self.modifiers]
        ends += [getattr(m, "start_epoch", -1.0) for m in self.modifiers]
        ends = [e for e in ends if e is not None and e >= 0]
        return max(ends) if ends else None

    def qat_start_epoch(self) -> float | None:
        """The first QuantizationModifier start epoch (-1 counts as 0), None without quantization."""
        starts = [max(m.start_epoch, 0.0) for m in self.of_type("QuantizationModifier")]
        return min(starts) if starts else None

    # ------------------------------------------------------------------------------------------------ output

    def to_yaml(self) -> str:
        """The resolved recipe (numbers instead of eval, overrides applied) as YAML that loads back equal."""
        doc: dict[str, Any] = {}
        if self.version is not None:
            doc["version"] = self.version
        doc.update(self.variables)
        groups: dict[str, list] = {}
        for mod in self.modifiers:
            groups.setdefault(mod.group, []).append(_Tagged(mod.type_name, mod.fields()))
        doc.update(groups)
        return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)

    def summary(self) -> dict[str, object]:
        """Flat ``{key: scalar}`` for MLflow params: epochs, counts, and per-modifier scalar fields.

        Keys: ``epochs``, ``recipe.sha256``, ``recipe.modifiers``, then ``<prefix>.<field>`` for the first modifier
        of each kind (prefix prune/quant/lr/distill/wd/epoch) and ``<prefix>.<i>.<field>`` for later ones, e.g.
        ``prune.final_sparsity``, ``prune.1.final_sparsity``, ``quant.start_epoch``. Lists become short strings.
        """
        prefixes = {"pruning": "prune", "quantization": "quant", "lr": "lr", "distillation": "distill",
                    "wd": "wd", "epoch": "epoch"}
        out: dict[str, object] = {"epochs": self.num_epochs(), "recipe.sha256": self.sha256,
                                  "recipe.modifiers": len(self.modifiers)}
        seen: dict[str, int] = {}
        for mod in self.modifiers:
            prefix = prefixes.get(mod.kind, mod.kind)
            index = seen.get(prefix, 0)
            seen[prefix] = index + 1
            key = prefix if index == 0 else f"{prefix}.{index}"
            out[f"{key}.type"] = mod.type_name
            for name, value in mod.fields().items():
                if name == "log_types":
                    continue
                if isinstance(value, (list, dict)):
                    text = json.dumps(value, default=str)
                    value = text if len(text) <= 200 else f"{len(value)} entries"
                out[f"{key}.{name}"] = value
        return out

    # ------------------------------------------------------------------------------------------------ stages

    def split(self, stage: str) -> "Recipe":
        """The part of the recipe one KFP training stage runs. Epochs stay absolute (the qat stage resumes the
        sparse stage's checkpoint at its epoch).

        - ``"sparse"``: every modifier except QuantizationModifier, with the epoch range, LR modifiers and
          distillation cut at the QAT start epoch (modifiers starting at/after it are dropped); the whole recipe if
          there is no QuantizationModifier.
        - ``"qat"``: EpochRangeModifier; LR / weight-decay modifiers still acting at or after the QAT start (plus
          the last SetLearningRateModifier before it, which defines the LR at the resume point); one
          ConstantPruningModifier per pruning modifier over the same selectors (so the zeros the sparse stage made
          stay zero) starting at the QAT start; distillation still running at the QAT start; QuantizationModifier.
        """
        qat = self.qat_start_epoch()
        if stage == "sparse":
            mods = [m for m in self.modifiers if m.type_name != "QuantizationModifier"]
            if qat is not None:
                mods = [_clip_end(m, qat) for m in mods if not _starts_at_or_after(m, qat)]
        elif stage == "qat":
            if qat is None:
                raise UserError(f"{self.path or '<recipe>'}: no QuantizationModifier, so the recipe has no qat stage")
            mods = _qat_stage(self.modifiers, qat)
        else:
            raise UserError(f"recipe split: unknown stage '{stage}'; expected 'sparse' or 'qat'")
        return self.derived(mods)

    def derived(self, modifiers: list[Modifier]) -> "Recipe":
        """A recipe of ``modifiers`` with this one's variables and path; its text (and sha256) is its own YAML."""
        part = Recipe(self.path, "", self.args, dict(self.variables), modifiers, self.version)
        part.original_text = part.to_yaml()
        part.sha256 = hashlib.sha256(part.original_text.encode()).hexdigest()
        return part

    def rebased(self, offset: float) -> "Recipe":
        """This recipe with every epoch field moved ``offset`` epochs earlier (not below 0; ``-1`` = unset stays).

        ``split("qat")`` keeps absolute epochs (QAT from epoch 50 of 56). The qat step trains a new run from the
        sparse stage's checkpoint, which starts at epoch 0, so the stage is rebased: QAT, the held masks and the LR
        schedule start at 0 and the run lasts ``num_epochs - qat_start`` epochs. Limits: an LR function that began
        before the QAT start restarts its curve at 0; epoch lists (``milestones``) are not moved.
        """
        if not offset:
            return self
        mods = []
        for m in self.modifiers:
            update = {f: max(0.0, float(getattr(m, f)) - offset) for f in EPOCH_FIELDS
                      if isinstance(getattr(m, f, None), (int, float)) and getattr(m, f) >= 0}
            moved = m.model_copy(update=update)
            moved.__pydantic_fields_set__ = set(m.model_fields_set) | set(update)
            mods.append(moved.placed(m.group, m.line))
        return self.derived(mods)


def _kind(value: Any) -> str:
    """YAML words for a loaded value's type, for error messages."""
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def _starts_at_or_after(mod: Modifier, epoch: float) -> bool:
    return mod.kind in ("lr", "wd", "distillation") and getattr(mod, "start_epoch", -1.0) >= epoch and epoch > 0


def _clip_end(mod: Modifier, epoch: float) -> Modifier:
    end = getattr(mod, "end_epoch", None)
    if mod.kind in ("epoch", "lr", "distillation") and end is not None and (end < 0 or end > epoch):
        if mod.type_name == "LearningRateFunctionModifier":
            return mod  # the function's shape is defined by its end; the trainer just stops at the epoch range
        clipped = mod.model_copy(update={"end_epoch": epoch})
        clipped.__pydantic_fields_set__ = set(mod.model_fields_set) | {"end_epoch"}
        return clipped.placed(mod.group, mod.line)
    return mod


def _qat_stage(mods: list[Modifier], qat: float) -> list[Modifier]:
    out: list[Modifier] = []
    last_set_lr = None
    for m in mods:
        if m.type_name == "SetLearningRateModifier" and max(m.start_epoch, 0) < qat:
            last_set_lr = m
    for m in mods:
        end = getattr(m, "end_epoch", -1.0)
        if m.kind == "epoch" or m.type_name == "QuantizationModifier":
            out.append(m)
        elif m.kind in ("lr", "wd"):
            if m is last_set_lr or (m.type_name != "SetLearningRateModifier" and (end < 0 or end > qat)) or (
                getattr(m, "start_epoch", -1.0) >= qat
            ):
                out.append(m)
        elif m.kind == "pruning":
            selectors: Any = m.params
            if isinstance(m, schemas.GMPruningModifier) and isinstance(m.final_sparsity, dict):
                selectors = [s for names in m.final_sparsity.values() for s in names]
            const = schemas.ConstantPruningModifier(params=selectors, start_epoch=qat)
            out.append(const.placed(m.group, m.line))
        elif m.kind == "distillation" and (end < 0 or end > qat):
            out.append(m)
    return out


class _Tagged:
    def __init__(self, tag: str, fields: dict):
        self.tag, self.fields = tag, fields


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes modifiers as ``!Name`` mappings and never uses anchors."""

    def ignore_aliases(self, data):
        return True


_Dumper.add_representer(_Tagged, lambda d, t: d.represent_mapping("!" + t.tag, t.fields))
_Dumper.add_representer(LineDict, lambda d, m: d.represent_dict(dict(m)))
_Dumper.add_representer(LineList, lambda d, s: d.represent_list(list(s)))


# ---------------------------------------------------------------------------------------------------- loading


def load_recipe(source: str | os.PathLike, recipe_args: dict | str | None = None, zoo: str | None = None,
                staged: bool = False) -> Recipe:
    """Load, override, evaluate and validate a recipe; every problem is a one-line UserError with file:line.
    ``staged``: it will be trained stage by stage (``split``), see ``rules.check_rules``.

    ``source``: a path, a ``zoo:`` stub (``zoo``: the zoo URI) or the recipe text. Rules across modifiers
    (``sparse_core.recipe.rules``) are checked here too, so ``recipe check`` reports them before any training.
    """
    path, text = _read_source(source, zoo)
    label = path or "<recipe>"
    args = parse_recipe_args(recipe_args)
    is_md = (path is not None and path.lower().endswith(".md")) or (path is None and looks_like_markdown(text))
    yaml_text = front_matter(text, label) if is_md else text
    raw = load_yaml(yaml_text, label)
    if raw is None:
        raise UserError(f"{label}:1: recipe is empty; expected variables and at least one '*modifiers' list")
    if path is None and not isinstance(raw, dict) and "\n" not in text.strip():
        raise UserError(f"{text.strip()}: recipe file not found")
    if not isinstance(raw, dict):
        raise UserError(f"{label}:1: recipe top level is a {_kind(raw)}; expected a mapping of variables "
                        "and '*modifiers' lists")
    resolver = _Resolver(label, raw, args)
    check_rules(resolver.modifiers, label, staged)
    return Recipe(path, text, args, resolver.variables, resolver.modifiers, raw.get("version"))


class _Resolver:
    """Turns the loaded YAML mapping into variables + modifiers, with file:line in every error."""

    def __init__(self, label: str, raw: LineDict, args: dict):
        self.label = label
        self.raw_vars: dict[str, Any] = {}
        self.var_lines: dict[str, int] = {}
        groups: list[tuple[str, Any, int]] = []
        for key, value in raw.items():
            line = raw.key_lines.get(key, 1)
            if not isinstance(key, str):
                raise UserError(f"{label}:{line}: top-level key {key!r} is not a name")
            if key == "version":
                continue
            if key.endswith("modifiers"):
                if value is None:
                    value = LineList()
                if not isinstance(value, list):
                    raise UserError(f"{label}:{line}: {key}: is a {_kind(value)}; expected a list of "
                                    "'- !ModifierName' entries")
                groups.append((key, value, line))
            elif isinstance(value, LineDict) and value.tag:
                raise UserError(f"{label}:{line}: {key}: !{value.tag} outside a '*modifiers' list; expected it as "
                                f"an entry of a list whose key ends in 'modifiers'")
            else:
                self.raw_vars[key] = value
                self.var_lines[key] = line
        if not groups:
            raise UserError(f"{label}:1: recipe has no modifiers; expected a top-level list whose key ends in "
                            "'modifiers' (e.g. training_modifiers)")
        for key in args:
            if key not in self.raw_vars:
                known = ", ".join(list(self.raw_vars)[:30]) + (", ..." if len(self.raw_vars) > 30 else "") or "none"
                raise UserError(f"{label}: --recipe-args: '{key}' is not a variable of this recipe (variables: {known})")
        self.raw_vars.update(copy.deepcopy(args))
        self.overridden = set(args)
        where = {name: "--recipe-args" if name in self.overridden else self.var_lines.get(name, 1)
                 for name in self.raw_vars}
        self.vars = Variables(label, self.raw_vars, where)
        self.variables = self.vars.values
        self.modifiers = [m for key, items, line in groups for m in self._group(key, items, line)]

    # modifiers -------------------------------------------------------------------------------------------

    def _group(self, key: str, items: list, line: int):
        item_lines = getattr(items, "item_lines", [])
        for i, item in enumerate(items):
            item_line = item_lines[i] if i < len(item_lines) else line
            yield self._modifier(key, item, item_line)

    def _modifier(self, group: str, item: Any, line: int) -> Modifier:
        label = self.label
        if isinstance(item, LineDict) and item.tag:
            type_name, raw_fields, field_lines = item.tag, item, item.key_lines
        elif isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), (dict, type(None))):
            type_name = next(iter(item))
            raw_fields = next(iter(item.values())) or LineDict()
            field_lines = getattr(raw_fields, "key_lines", {})
        else:
            raise UserError(f"{label}:{line}: {group}: entry is not a modifier; expected '- !ModifierName' followed "
                            "by its fields")
        cls = schemas.MODIFIERS.get(type_name)
        if cls is None:
            known = ", ".join(sorted(schemas.MODIFIERS))
            raise UserError(f"{label}:{line}: unknown modifier '{type_name}' (known: {known})")
        allowed = list(cls.model_fields)
        for name in raw_fields:
            if name not in cls.model_fields:
                raise UserError(f"{label}:{field_lines.get(name, line)}: {type_name}: unknown field '{name}' "
                                f"(allowed: {', '.join(allowed)})")
        values = {name: self.vars.value(value, name, field_lines.get(name, line)) for name, value in raw_fields.items()}
        try:
            mod = cls(**values)
        except ValidationError as err:
            first = _best_error(err.errors())
            field = str(first["loc"][0]) if first["loc"] else "?"
            where = _nested_line(raw_fields.get(field), first["loc"][1:], field_lines.get(field, line))
            if first["type"] == "missing" and len(first["loc"]) == 1:
                raise UserError(f"{label}:{line}: {type_name}: missing required field '{field}'") from None
            got = values.get(field)
            shown = f" (got {got!r})" if len(first["loc"]) == 1 and not isinstance(got, (dict, list)) else ""
            raise UserError(f"{label}:{where}: {type_name}: {field}: {_pydantic_msg(first)}{shown}") from None
        for field, problem in mod.problems():
            raise UserError(f"{label}:{field_lines.get(field, line)}: {type_name}: {field}: {problem}")
        return mod.placed(group, line)


def _nested_line(value: Any, loc: tuple, line: int) -> int:
    """The file line of the deepest key along ``loc`` inside a loaded YAML value."""
    for part in loc:
        if isinstance(value, LineDict) and part in value:
            line, value = value.key_lines.get(part, line), value[part]
        elif isinstance(value, LineList) and isinstance(part, int) and part < len(value):
            line, value = value.item_lines[part], value[part]
        else:
            break
    return line


_UNION_TAG = re.compile(r"^([a-z_-]+\[.*\]|str|int|float|bool|none|QuantScheme|QuantArgs|list|dict)$")


def _clean_loc(loc: tuple) -> list:
    """Drop pydantic's union-branch tags (``str``, ``QuantScheme``, ``list[...]``) from an error location."""
    return [p for p in loc if not (isinstance(p, str) and _UNION_TAG.match(p))]


def _best_error(errors: list[dict]) -> dict:
    """The error most worth showing: an unknown key, else the deepest location (the branch that got furthest)."""
    for e in errors:
        e["loc"] = tuple(_clean_loc(e["loc"]))
    return max(errors, key=lambda e: (e["type"] == "extra_forbidden", len(e["loc"])))


def _pydantic_msg(error: dict) -> str:
    loc = ".".join(str(p) for p in error["loc"][1:])
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        msg = "unknown key"
    elif error["type"] == "missing":
        msg = "required key missing"
    return f"{loc}: {msg}" if loc else msg
