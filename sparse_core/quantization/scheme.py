"""Which tensors of which modules a QuantizationModifier fake-quantizes, resolved the way SparseML did.

Two generations of the modifier exist and recipes of both must run unchanged:

- **scheme** (``scheme``, ``scheme_overrides``, ``ignore``; seed 000): every quantizable module (a fused Conv+BN, or
  any leaf module that is not a no-op such as Identity/Dropout) gets the default scheme — input activations 8-bit
  asymmetric, weights 8-bit symmetric, no output quantization — unless ``ignore`` names it (by module type, or a
  name prefix) or ``scheme_overrides`` replaces it (longest name prefix wins, then module type; a type override also
  targets non-leaf modules). Inside an override, an omitted field keeps SparseML's default and ``null`` disables it.
- **legacy** (``submodules``, ``exclude_module_types``, ``custom_quantizable_module_types``,
  ``quantize_conv_activations``, ``activation_bits``...; seed 002): torch eager-mode propagation as SparseML ran it —
  Conv/Linear get input, weight and (unless disabled) output quantization; modules of
  ``custom_quantizable_module_types`` get their input quantized; ``exclude_module_types`` loses its own weight/output
  quantization; other activations torch knows (ReLU6, Hardswish, LeakyReLU, ELU) get their output quantized.

Defaults (issue 3/8): weights int8 symmetric **per-channel**, activations uint8 asymmetric per-tensor (int8 when
symmetric). ``strategy: tensor|channel`` overrides the granularity; the modifier's ``weight_strategy`` (sparsepipe's,
either generation) sets it for every module's weights: ``for_engine`` turns it to ``tensor`` for DeepSparse, which
compiles per-channel weight scales only partly (35-51% native vs 99.5% per-tensor, thin YOLOv8n) and ran the
per-channel QAT model slower than the float one (39.1 vs 69.4 img/s). Names that match no module of the model are
reported (a yolov8m recipe on a yolov8n has fewer C2f repeats) rather than fatal, unless the recipe sets SparseML's
``strict: true`` (SparseML's default was strict; sparsepipe's is lenient so seed recipes run on smaller variants).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from sparse_core.errors import NotSupportedYet, UserError
from sparse_core.recipe.schemas import QuantArgs, QuantizationModifier, QuantScheme

# module types SparseML never treats as quantizable leaves (no-ops, losses, dropouts)
NON_QUANTIZABLE = frozenset({
    "Module", "Identity", "Flatten", "Unflatten", "DataParallel", "ModuleList", "Sequential", "ModuleDict",
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
    "BCEWithLogitsLoss", "CrossEntropyLoss", "MSELoss", "L1Loss",
})
FUSED = frozenset({"ConvBn2d", "ConvBnReLU2d", "ConvReLU2d"})
CONV_TYPES = frozenset({"Conv1d", "Conv2d", "Conv3d", *FUSED})
LINEAR_TYPES = frozenset({"Linear"})
# leaf activations torch's eager QAT observes the output of (legacy generation)
LEGACY_OBSERVED = frozenset({"ReLU6", "Hardswish", "LeakyReLU", "ELU", "PReLU"})
NEVER_QUANTIZED = frozenset({"DFL"})
LEGACY_FIELDS = ("submodules", "exclude_module_types", "custom_quantizable_module_types", "quantize_conv_activations",
                 "quantize_linear_activations", "quantize_embeddings", "quantize_embedding_activations",
                 "activation_bits", "weight_bits", "reduce_range", "exclude_batchnorm", "tensorrt",
                 "activation_qconfig_kwargs", "weight_qconfig_kwargs")
SCHEME_FIELDS = ("scheme", "scheme_overrides", "ignore", "strict")


@dataclass(frozen=True)
class QArgs:
    """One tensor's resolved quantization: bits, symmetric or not, per-channel or per-tensor."""

    num_bits: int = 8
    symmetric: bool = False
    per_channel: bool = False
    reduce_range: bool = False

    def describe(self) -> str:
        return (f"{'int' if self.symmetric else 'uint'}{self.num_bits} {'sym' if self.symmetric else 'asym'} "
                f"{'per-channel' if self.per_channel else 'per-tensor'}")


@dataclass(frozen=True)
class ModuleScheme:
    """What to fake-quantize around one module (None = leave that tensor in float)."""

    input: QArgs | None = None
    weights: QArgs | None = None
    output: QArgs | None = None

    def any(self) -> bool:
        return any((self.input, self.weights, self.output))


ACT_DEFAULT = QArgs(8, symmetric=False)
WEIGHT_DEFAULT = QArgs(8, symmetric=True, per_channel=True)
DEFAULT = ModuleScheme(input=ACT_DEFAULT, weights=WEIGHT_DEFAULT)
TENSORRT = ModuleScheme(input=QArgs(8, symmetric=True), weights=WEIGHT_DEFAULT)
NAMED_SCHEMES = {"default": DEFAULT, "deepsparse": DEFAULT, "tensorrt": TENSORRT}


def _args(args: QuantArgs | None, weights: bool, where: str) -> QArgs | None:
    if args is None:
        return None
    symmetric = args.symmetric if "symmetric" in args.model_fields_set else weights
    strategy = args.strategy or ("channel" if weights else "tensor")
    if strategy == "channel" and not weights:
        raise NotSupportedYet(f"{where}: strategy: channel for activations is not supported; expected tensor")
    kwargs = dict(args.kwargs or {})
    reduce_range = bool(kwargs.pop("reduce_range", False))
    if kwargs:
        raise NotSupportedYet(f"{where}: kwargs {sorted(kwargs)} are not supported; only reduce_range is")
    if args.num_bits != 8:
        raise NotSupportedYet(f"{where}: num_bits: {args.num_bits}; only 8-bit quantization exports to ONNX "
                              "QuantizeLinear/DequantizeLinear (int8/uint8)")
    return QArgs(args.num_bits, symmetric, strategy == "channel", reduce_range)


def _scheme(value: str | QuantScheme | None, where: str) -> ModuleScheme:
    """SparseML's QuantizationScheme.load: a name, null (= default) or a mapping whose omitted fields default."""
    if value is None or isinstance(value, str):
        name = value or "default"
        if name not in NAMED_SCHEMES:
            raise UserError(f"{where}: scheme '{name}' is unknown; expected one of {', '.join(NAMED_SCHEMES)} "
                            "or a mapping of input_activations / weights / output_activations")
        return NAMED_SCHEMES[name]
    fields = value.model_fields_set
    return ModuleScheme(
        input=_args(value.input_activations, False, where) if "input_activations" in fields else ACT_DEFAULT,
        weights=_args(value.weights, True, where) if "weights" in fields else WEIGHT_DEFAULT,
        output=_args(value.output_activations, False, where) if "output_activations" in fields else None,
    )


def generation(mod: QuantizationModifier, where: str) -> str:
    """'scheme' or 'legacy' from the fields the recipe set (SparseML routed legacy-only fields the same way)."""
    legacy = [f for f in LEGACY_FIELDS if f in mod.model_fields_set]
    scheme = [f for f in SCHEME_FIELDS if f in mod.model_fields_set]
    if legacy and scheme:
        raise UserError(f"{where}: mixes legacy fields ({', '.join(legacy)}) with scheme fields ({', '.join(scheme)}); "
                        "SparseML reads one generation per QuantizationModifier — use one of them")
    return "legacy" if legacy else "scheme"


def _match(name: str, type_name: str, keys) -> str | None:
    """SparseML's _match_submodule_name_or_type: the longest key that prefixes ``name``, else an exact type key."""
    best = ""
    for key in keys:
        if name.startswith(key) and len(key) > len(best):
            best = key
    if best:
        return best
    return type_name if type_name in keys else None


def _quantizable(module: nn.Module) -> bool:
    kind = type(module).__name__
    if kind in NON_QUANTIZABLE:
        return False
    return kind in FUSED or not any(True for _ in module.children())


def _units(model: nn.Module, scope: list[str] | None):
    """(name, module) pairs to consider: every module, but not inside a fused Conv+BN (it is one unit) nor inside
    the Detect head's DFL (box decoding: a fixed arange conv that stays float, see docs/quantization.md)."""
    closed: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f + ".") for f in closed):
            continue
        if type(module).__name__ in FUSED or type(module).__name__ in NEVER_QUANTIZED:
            closed.append(name)
        if type(module).__name__ in NEVER_QUANTIZED:
            continue
        if scope is not None and not any(name == s or name.startswith(s + ".") for s in scope):
            continue
        yield name, module


@dataclass
class Resolution:
    """Per-module schemes plus the recipe names that matched nothing (reported, not fatal)."""

    schemes: dict[str, ModuleScheme]
    unmatched: dict[str, list[str]]
    generation: str


def resolve(model: nn.Module, mod: QuantizationModifier, where: str) -> Resolution:
    """Resolve ``mod`` over ``model`` (already restructured: Conv+BN fused, per-instance activations, add inputs)."""
    gen = generation(mod, where)
    res = _resolve_legacy(model, mod, where) if gen == "legacy" else _resolve_scheme(model, mod, where)
    if mod.weight_strategy is not None:
        per_channel = mod.weight_strategy == "channel"
        res.schemes = {n: replace(s, weights=replace(s.weights, per_channel=per_channel)) if s.weights else s
                       for n, s in res.schemes.items()}
    return res


# engines whose INT8 kernels need one weight scale per tensor (DeepSparse 1.8: "non-scalar or non-uniform scales")
PER_TENSOR_ENGINES = frozenset({"deepsparse"})


def for_engine(mod: QuantizationModifier, engine: str) -> QuantizationModifier:
    """``mod`` as QAT for ``engine`` should run it: per-tensor weights for DeepSparse unless the recipe itself set
    ``weight_strategy``; any other engine gets ``mod`` unchanged (per-channel by default: more accurate)."""
    if engine not in PER_TENSOR_ENGINES or mod.weight_strategy is not None:
        return mod
    moved = mod.model_copy(update={"weight_strategy": "tensor"})
    moved.__pydantic_fields_set__ = set(mod.model_fields_set) | {"weight_strategy"}
    return moved.placed(mod.group, mod.line)


def _unmatched(model: nn.Module, keys) -> list[str]:
    names = [(n, type(m).__name__) for n, m in model.named_modules()]
    return [k for k in keys if not any(n.startswith(k) or t == k for n, t in names)]


def _resolve_scheme(model: nn.Module, mod: QuantizationModifier, where: str) -> Resolution:
    default = _scheme(mod.scheme if isinstance(mod.scheme, (str, QuantScheme)) else None, f"{where}: scheme")
    if mod.default_scheme is not None:
        default = _scheme(mod.default_scheme, f"{where}: default_scheme")
    overrides = {k: _scheme(v, f"{where}: scheme_overrides: {k}") for k, v in (mod.scheme_overrides or {}).items()}
    ignore = list(mod.ignore or [])
    out: dict[str, ModuleScheme] = {}
    for name, module in _units(model, None):
        if not name:
            continue
        kind = type(module).__name__
        if ignore and _match(name, kind, ignore):
            continue
        key = _match(name, kind, overrides)
        scheme = overrides[key] if key else default
        if (key == kind or _quantizable(module)) and scheme.any():
            out[name] = scheme
    unmatched = {k: v for k, v in (("ignore", _unmatched(model, ignore)),
                                    ("scheme_overrides", _unmatched(model, overrides))) if v}
    if mod.strict and unmatched:
        field, names = next(iter(unmatched.items()))
        raise UserError(f"{where}: {field}: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''} match no module "
                        "of this model (strict: true); expected module names or types of the model being trained")
    return Resolution(out, unmatched, "scheme")


def _resolve_legacy(model: nn.Module, mod: QuantizationModifier, where: str) -> Resolution:
    if mod.activation_qconfig_kwargs or mod.weight_qconfig_kwargs:
        raise NotSupportedYet(f"{where}: activation_qconfig_kwargs / weight_qconfig_kwargs are not supported yet")
    for field in ("activation_bits", "weight_bits"):
        bits = getattr(mod, field)
        if bits is not None and bits != 8:
            raise NotSupportedYet(f"{where}: {field}: {bits}; only 8-bit quantization exports to ONNX Q/DQ")
    reduce = bool(mod.reduce_range)
    act = QArgs(8, symmetric=bool(mod.tensorrt), reduce_range=reduce)
    weight = QArgs(8, symmetric=True, per_channel=True)
    conv_out = act if mod.quantize_conv_activations is not False else None
    linear_out = act if mod.quantize_linear_activations is not False else None
    custom = set(mod.custom_quantizable_module_types or [])
    exclude = set(mod.exclude_module_types or []) | {"Softmax"}
    scope = list(mod.submodules) if mod.submodules else None
    out: dict[str, ModuleScheme] = {}
    for name, module in _units(model, scope):
        if not name:
            continue
        kind = type(module).__name__
        excluded = kind in exclude
        if kind in CONV_TYPES or kind in LINEAR_TYPES:
            output = conv_out if kind in CONV_TYPES else linear_out
            scheme = ModuleScheme(input=act, weights=None if excluded else weight, output=None if excluded else output)
        elif kind in custom:
            # QuantWrapper's input stub keeps its qconfig even when the type is excluded (SparseML stripped only
            # the wrapped module's own qconfig)
            scheme = ModuleScheme(input=act, output=act if kind in LEGACY_OBSERVED and not excluded else None)
        elif kind in LEGACY_OBSERVED and not excluded and _quantizable(module):
            scheme = ModuleScheme(output=act)
        else:
            continue
        if scheme.any():
            out[name] = scheme
    unmatched = {"submodules": [s for s in scope or [] if not any(n == s for n, _ in model.named_modules())]}
    return Resolution(out, {k: v for k, v in unmatched.items() if v}, "legacy")
