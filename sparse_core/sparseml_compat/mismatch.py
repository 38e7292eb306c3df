"""Why a SparseML checkpoint's state does not fit the rebuilt model, said per module rather than per key.

A QAT checkpoint that does not import almost always differs in *which* modules are quantized, and each such
module's dozen observer keys would hide that. So the keys only one side has are grouped by module: modules with a
fake quant (input / weight / output) only in the checkpoint or only in the rebuilt model, each with the recipe
fields that decide it (``submodules``, ``ignore``, ``exclude_module_types``, ``scheme_overrides`` ... or sparsepipe's
float DFL), then any other modules whose tensors differ.
"""

from __future__ import annotations

from torch import nn

_QUANT = {"input_quant": "input", "output_quant": "output", "weight_fake_quant": "weight"}
_SHOWN = 4


def owner(key: str) -> tuple[str, str | None]:
    """(module, fake-quant kind or None) of one state key in our names."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in _QUANT:
            return ".".join(parts[:i]), _QUANT[part]
    return ".".join(parts[:-1]), None


def quantized_modules(keys) -> dict[str, set[str]]:
    """Module → the kinds of fake quant it has, from state keys in our names."""
    out: dict[str, set[str]] = {}
    for key in keys:
        module, kind = owner(key)
        if kind:
            out.setdefault(module, set()).add(kind)
    return out


def _listed(items: list[str]) -> str:
    return ", ".join(items[:_SHOWN]) + (f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def describe(extra: list[str], missing: list[str], why=None) -> str:
    """One line: quantization differences per module (with ``why(module)``), then other differing modules."""
    parts = []
    for label, keys in (("quantized only in the checkpoint", extra), ("quantized only in the rebuilt model", missing)):
        quant = quantized_modules(keys)
        if quant:
            items = [f"{m} ({'/'.join(sorted(k))}{'; ' + why(m) if why else ''})" for m, k in sorted(quant.items())]
            parts.append(f"{label} {len(quant)}: {_listed(items)}")
    for label, keys in (("other tensors only in the checkpoint", extra), ("only in the rebuilt model", missing)):
        counts: dict[str, int] = {}
        for key in keys:
            module, kind = owner(key)
            if kind is None:
                counts[module] = counts.get(module, 0) + 1
        if counts:
            items = [f"{m} ({n})" for m, n in sorted(counts.items())]
            parts.append(f"{label}, {sum(counts.values())} in {len(counts)} module(s): {_listed(items)}")
    return "; ".join(parts)


def recipe_fields(name: str, model: nn.Module, mods: list) -> str:
    """The QuantizationModifier fields (and sparsepipe rules) that decide whether module ``name`` is quantized."""
    from sparse_core.quantization.scheme import _match

    kind = _type(model, name)
    ancestors = [_type(model, p) for p in _prefixes(name)]
    out = []
    for mod in mods:
        if mod.submodules:
            inside = [s for s in mod.submodules if name == s or name.startswith(s + ".")]
            out.append(f"submodules: {inside[0]}" if inside else "outside submodules")
        for field in ("ignore", "scheme_overrides"):
            key = _match(name, kind, list(getattr(mod, field) or []))
            if key:
                out.append(f"{field}: {key}")
        for field in ("exclude_module_types", "custom_quantizable_module_types"):
            if kind in (getattr(mod, field) or []):
                out.append(f"{field}: {kind}")
    if "DFL" in ancestors:
        out.append("DFL box decode: sparsepipe keeps it in float (name model.22.dfl in ignore, or leave it out "
                   "of submodules)")
    return f"{kind}: " + (", ".join(out) if out else "no recipe field names it")


def _type(model: nn.Module, name: str) -> str:
    """Type name of ``name`` (get_submodule: Ultralytics shares one SiLU, which named_modules lists only once)."""
    try:
        return type(model.get_submodule(name)).__name__
    except AttributeError:
        return "absent"


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
