"""Strict schemas for every SparseML modifier the seed recipes use.

Each modifier is a pydantic model with ``extra="forbid"``: a typo in a recipe is an error naming the field, never a
silently ignored setting. ``problems()`` holds the cross-field rules (end >= start, sparsity in [0, 1), regexes
that compile). ``group`` (the top-level key the modifier came from) and ``line`` are bookkeeping, not fields, so
two modifiers are equal when their fields are, wherever they were written.
"""

from __future__ import annotations

import re
import warnings
from typing import Annotated, Any, ClassVar, Iterator, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, PrivateAttr

ALL_TOKEN = "__ALL__"
ALL_PRUNABLE_TOKEN = "__ALL_PRUNABLE__"
FROM_PARAM_TOKEN = "__FROM_PARAM__"


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


Num = Annotated[float, BeforeValidator(_no_bool)]
Int = Annotated[int, BeforeValidator(_no_bool)]
Selectors = str | list[str]
LogTypes = str | list[str] | None

MODIFIERS: dict[str, type["Modifier"]] = {}


def register(cls: type["Modifier"]) -> type["Modifier"]:
    """Make a schema known under its class name (the ``!Tag`` recipes use)."""
    cls.type_name = cls.__name__
    MODIFIERS[cls.__name__] = cls
    return cls


class Modifier(BaseModel):
    """Base of all modifier schemas. Lifecycle (run by sparse_core.modifiers.RecipeManager): initialize → update
    at each step with the fractional epoch → finalize. ``kind`` says which executor handles it."""

    model_config = ConfigDict(extra="forbid")
    type_name: ClassVar[str] = "Modifier"
    kind: ClassVar[str] = "other"
    log_types: LogTypes = None

    _group: str = PrivateAttr(default="modifiers")
    _line: int = PrivateAttr(default=0)

    @property
    def group(self) -> str:
        return self._group

    @property
    def line(self) -> int:
        return self._line

    def placed(self, group: str, line: int) -> "Modifier":
        """Record where the modifier was written (for errors) and return self."""
        self._group, self._line = group, line
        return self

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.model_dump() == other.model_dump()  # type: ignore[union-attr]

    __hash__ = None  # type: ignore[assignment]

    def fields(self) -> dict[str, Any]:
        """The fields the recipe set, resolved (what ``Recipe.to_yaml`` writes)."""
        return self.model_dump(exclude_unset=True)

    def problems(self) -> Iterator[tuple[str, str]]:
        """(field, what is wrong) for rules one field's type cannot express."""
        start, end = getattr(self, "start_epoch", None), getattr(self, "end_epoch", None)
        if start is not None and end is not None and end >= 0 and start >= 0 and end < start:
            yield "end_epoch", f"end_epoch {end:g} is before start_epoch {start:g}; expected end_epoch >= start_epoch"


def _check_selectors(field: str, selectors: Selectors) -> Iterator[tuple[str, str]]:
    for sel in [selectors] if isinstance(selectors, str) else selectors:
        if sel.startswith("re:"):
            try:
                with warnings.catch_warnings():  # "possible nested set" and the like: not a second stderr line
                    warnings.simplefilter("ignore")
                    re.compile(sel[3:])  # cached by re: selector matching later compiles it silently
            except re.error as err:
                yield field, f"regex '{sel}' does not compile ({err}); expected a Python regular expression after 're:'"
        elif not sel.strip():
            yield field, "empty selector; expected a parameter name, 're:<regex>', __ALL__ or __ALL_PRUNABLE__"


def _sparsity_problem(field: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, (int, float)) and not 0.0 <= value < 1.0:
        yield field, f"sparsity {value:g} is outside [0, 1); expected a fraction such as 0.8"


# ---------------------------------------------------------------------------------------------------- training


@register
class EpochRangeModifier(Modifier):
    """Sets the number of training epochs (end_epoch)."""

    kind: ClassVar[str] = "epoch"
    start_epoch: Num = 0.0
    end_epoch: Num

    def problems(self):
        yield from super().problems()
        if self.end_epoch <= 0:
            yield "end_epoch", f"end_epoch {self.end_epoch:g} must be > 0"


@register
class SetLearningRateModifier(Modifier):
    """Sets the LR of (selected) optimizer param groups once start_epoch is reached; it stays until changed."""

    kind: ClassVar[str] = "lr"
    learning_rate: Num | None
    param_groups: list[Int] | None = None
    start_epoch: Num = -1.0
    end_epoch: Num = -1.0
    constant_logging: bool = False

    def problems(self):
        yield from super().problems()
        if self.learning_rate is not None and self.learning_rate < 0:
            yield "learning_rate", f"learning_rate {self.learning_rate:g} is negative"


@register
class LearningRateFunctionModifier(Modifier):
    """LR follows lr_func from init_lr at start_epoch to final_lr at end_epoch, updated every step."""

    kind: ClassVar[str] = "lr"
    lr_func: Literal["linear", "cosine"]
    init_lr: Num
    final_lr: Num
    start_epoch: Num
    end_epoch: Num
    param_groups: list[Int] | None = None
    update_frequency: Num = -1.0

    def problems(self):
        yield from super().problems()
        if self.end_epoch <= self.start_epoch:
            yield "end_epoch", f"end_epoch {self.end_epoch:g} must be after start_epoch {self.start_epoch:g}"
        for name in ("init_lr", "final_lr"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                yield name, f"{name} {getattr(self, name):g} is outside [0, 1]"


_LR_CLASS_KWARGS = {
    "StepLR": ({"step_size"}, {"step_size", "gamma"}),
    "MultiStepLR": ({"milestones"}, {"milestones", "gamma"}),
    "ExponentialLR": ({"gamma"}, {"gamma"}),
    "CosineAnnealingWarmRestarts": ({"T_0"}, {"T_0", "T_mult", "eta_min"}),
}


@register
class LearningRateModifier(Modifier):
    """A PyTorch LR scheduler class (StepLR, MultiStepLR, ExponentialLR, ...) from init_lr, in epochs."""

    kind: ClassVar[str] = "lr"
    lr_class: Literal["StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingWarmRestarts"]
    lr_kwargs: dict[str, Any]
    init_lr: Num
    start_epoch: Num
    end_epoch: Num = -1.0
    update_frequency: Num = -1.0
    constant_logging: bool = False

    def problems(self):
        yield from super().problems()
        required, allowed = _LR_CLASS_KWARGS[self.lr_class]
        for key in sorted(set(self.lr_kwargs) - allowed):
            yield "lr_kwargs", f"unknown {self.lr_class} argument '{key}' (allowed: {', '.join(sorted(allowed))})"
        for key in sorted(required - set(self.lr_kwargs)):
            yield "lr_kwargs", f"{self.lr_class} needs '{key}'"


@register
class SetWeightDecayModifier(Modifier):
    """Sets the optimizer weight decay once start_epoch is reached."""

    kind: ClassVar[str] = "wd"
    weight_decay: Num
    start_epoch: Num = -1.0
    param_groups: list[Int] | None = None
    constant_logging: bool = False

    def problems(self):
        yield from super().problems()
        if self.weight_decay < 0:
            yield "weight_decay", f"weight_decay {self.weight_decay:g} is negative"


# ---------------------------------------------------------------------------------------------------- pruning

MASK_TYPES = ("unstructured", "block", "block4", "channel", "filter")


@register
class GMPruningModifier(Modifier):
    """Gradual magnitude pruning: sparsity follows inter_func from init_sparsity (start_epoch) to final_sparsity
    (end_epoch), masks recomputed every update_frequency epochs; pruned weights never come back."""

    kind: ClassVar[str] = "pruning"
    params: Selectors = []
    init_sparsity: Num | Literal["__FROM_PARAM__"]
    final_sparsity: Num | list[Num] | dict[float, list[str]]
    start_epoch: Num
    end_epoch: Num
    update_frequency: Num
    inter_func: Literal["linear", "cubic", "inverse_cubic"] = "cubic"
    global_sparsity: bool = False
    leave_enabled: bool = True
    mask_type: Literal["unstructured", "block", "block4", "channel", "filter"] | list[Int] = "unstructured"
    # sparsepipe extension (mask_type: filter only): every kept width a multiple of this, never below it. Unset:
    # multiples of 8 in groups of 16+ channels. 16 suits INT8 kernels (fewer than 16 output channels run slower in
    # int8 than in FP32 on onnxruntime; see benchmarks/results/speed.md)
    channel_multiple: Int | None = None

    def problems(self):
        yield from super().problems()
        if self.channel_multiple is not None and (self.channel_multiple < 1 or self.mask_type != "filter"):
            yield "channel_multiple", (f"{self.channel_multiple} is invalid here; expected a positive integer with "
                                       "mask_type: filter")
        if self.start_epoch < 0:
            yield "start_epoch", f"start_epoch {self.start_epoch:g} is negative"
        if self.end_epoch > self.start_epoch and self.update_frequency <= 0:
            yield "update_frequency", f"update_frequency {self.update_frequency:g} must be > 0"
        yield from _sparsity_problem("init_sparsity", self.init_sparsity)
        final = self.final_sparsity
        if isinstance(final, dict):
            if self.params:
                yield "params", "must be empty when final_sparsity maps sparsities to parameter lists"
            for value, names in final.items():
                yield from _sparsity_problem("final_sparsity", value)
                yield from _check_selectors("final_sparsity", names)
        else:
            if not self.params:
                yield "params", "no parameters selected; expected names, 're:<regex>', __ALL__ or __ALL_PRUNABLE__"
            yield from _check_selectors("params", self.params)
            for value in final if isinstance(final, list) else [final]:
                yield from _sparsity_problem("final_sparsity", value)
            if isinstance(final, list):
                n_params = 1 if isinstance(self.params, str) else len(self.params)
                if len(final) != n_params:
                    yield "final_sparsity", (
                        f"has {len(final)} values for {n_params} params entries; expected one per entry"
                    )
        if isinstance(self.mask_type, list) and (len(self.mask_type) != 2 or min(self.mask_type) < 1):
            yield "mask_type", f"{self.mask_type} is not a block shape; expected [rows, cols] like [1, 4]"

    def selector_sparsities(self) -> list[tuple[str, float]]:
        """(selector, final sparsity) pairs, whichever way final_sparsity was written."""
        final = self.final_sparsity
        if isinstance(final, dict):
            return [(sel, float(value)) for value, names in final.items() for sel in names]
        selectors = [self.params] if isinstance(self.params, str) else list(self.params)
        if isinstance(final, list):
            return list(zip(selectors, map(float, final)))
        return [(sel, float(final)) for sel in selectors]

    def uses_global_sparsity(self) -> bool:
        return self.global_sparsity


@register
class MagnitudePruningModifier(GMPruningModifier):
    """Alias of GMPruningModifier (SparseML keeps both names)."""


@register
class GlobalMagnitudePruningModifier(GMPruningModifier):
    """GMP ranking all selected weights together (one threshold across layers) instead of per layer."""

    global_sparsity: bool = True


@register
class ConstantPruningModifier(Modifier):
    """Keeps the zeros the selected weights have at start_epoch (sparse transfer learning)."""

    kind: ClassVar[str] = "pruning"
    params: Selectors
    start_epoch: Num = -1.0
    end_epoch: Num = -1.0
    update_frequency: Num = -1.0

    def problems(self):
        yield from super().problems()
        if not self.params:
            yield "params", "no parameters selected; expected names, 're:<regex>', __ALL__ or __ALL_PRUNABLE__"
        yield from _check_selectors("params", self.params)


# ---------------------------------------------------------------------------------------------------- quantization


class QuantArgs(BaseModel):
    """One tensor's quantization settings inside a scheme."""

    model_config = ConfigDict(extra="forbid")
    num_bits: Int = 8
    symmetric: bool = True
    strategy: Literal["tensor", "channel"] | None = None
    kwargs: dict[str, Any] | None = None


class QuantScheme(BaseModel):
    """Which tensors of a module to quantize and how (null = leave that tensor in float)."""

    model_config = ConfigDict(extra="forbid")
    input_activations: QuantArgs | None = None
    weights: QuantArgs | None = None
    output_activations: QuantArgs | None = None
    target_hardware: str | None = None


@register
class QuantizationModifier(Modifier):
    """QAT from start_epoch: fake-quant modules, observers frozen at disable_quantization_observer_epoch, BN stats
    frozen at freeze_bn_stats_epoch. Fields of both SparseML generations are accepted (legacy submodules /
    exclude_module_types and the newer ignore / scheme_overrides)."""

    kind: ClassVar[str] = "quantization"
    start_epoch: Num = -1.0
    end_epoch: Num = -1.0
    scheme: str | QuantScheme | None = None
    default_scheme: QuantScheme | None = None
    scheme_overrides: dict[str, str | QuantScheme | None] | None = None
    ignore: list[str] | None = None
    submodules: list[str] | None = None
    model_fuse_fn_name: str | None = None
    model_fuse_fn_kwargs: dict[str, Any] | None = None
    disable_quantization_observer_epoch: Num | None = None
    freeze_bn_stats_epoch: Num | None = None
    quantize_embeddings: bool | None = None
    quantize_embedding_activations: bool | None = None
    quantize_linear_activations: bool | None = None
    quantize_conv_activations: bool | None = None
    reduce_range: bool | None = None
    activation_bits: Int | None = None
    weight_bits: Int | None = None
    exclude_batchnorm: bool | None = None
    exclude_module_types: list[str] | None = None
    custom_quantizable_module_types: list[str] | None = None
    activation_qconfig_kwargs: dict[str, Any] | None = None
    weight_qconfig_kwargs: dict[str, Any] | None = None
    tensorrt: bool | None = None
    num_calibration_steps: Int | None = None
    strict: bool | None = None  # SparseML: ignore/scheme_overrides names must all match (sparsepipe: warn unless true)
    # sparsepipe: every module's weight granularity, whatever the scheme says (tensor: the only weight scales
    # DeepSparse 1.8 compiles natively; see quantization.scheme.for_engine)
    weight_strategy: Literal["tensor", "channel"] | None = None

    def problems(self):
        yield from super().problems()
        if self.start_epoch < 0 and self.start_epoch != -1:
            yield "start_epoch", f"start_epoch {self.start_epoch:g} is negative"
        for name in ("disable_quantization_observer_epoch", "freeze_bn_stats_epoch"):
            value = getattr(self, name)
            if value is not None and value < max(self.start_epoch, 0):
                yield name, f"{name} {value:g} is before start_epoch {self.start_epoch:g}"
        for name in ("activation_bits", "weight_bits"):
            value = getattr(self, name)
            if value is not None and not 2 <= value <= 16:
                yield name, f"{name} {value} is outside [2, 16]"


# ---------------------------------------------------------------------------------------------------- distillation


@register
class PerLayerDistillationModifier(Modifier):
    """Feature imitation: MSE between paired student/teacher layer outputs, weighted by gain."""

    kind: ClassVar[str] = "distillation"
    gain: Num = 1.5
    start_epoch: Num = -1.0
    end_epoch: Num = -1.0
    update_frequency: Num = -1.0
    normalize: bool = True
    student_layer_names: list[str] | None = None
    teacher_layer_names: list[str] | None = None
    project_features: bool = True
    epsilon: Num = 1e-6

    def problems(self):
        yield from super().problems()
        s, t = self.student_layer_names, self.teacher_layer_names
        if s is not None and t is not None and len(s) != len(t):
            yield "teacher_layer_names", f"has {len(t)} names for {len(s)} student_layer_names; expected the same"
        if self.gain < 0:
            yield "gain", f"gain {self.gain:g} is negative"


@register
class DistillationModifier(Modifier):
    """Output (knowledge) distillation: loss = hardness*task + (1-hardness)*KL(teacher/T || student/T)*T²."""

    kind: ClassVar[str] = "distillation"
    start_epoch: Num = -1.0
    end_epoch: Num = -1.0
    update_frequency: Num = -1.0
    hardness: Num = 0.5
    temperature: Num = 2.0
    gain: Num | None = None
    distill_output_keys: list[Any] | None = None
    teacher_input_keys: list[Any] | None = None

    def problems(self):
        yield from super().problems()
        if not 0.0 <= self.hardness <= 1.0:
            yield "hardness", f"hardness {self.hardness:g} is outside [0, 1]"
        if self.temperature <= 0:
            yield "temperature", f"temperature {self.temperature:g} must be > 0"


@register
class OutputDistillationModifier(DistillationModifier):
    """Alias of DistillationModifier (the name sparsepipe docs use for KD)."""
