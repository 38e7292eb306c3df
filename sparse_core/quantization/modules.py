"""The modules a QAT model is made of: Ultralytics blocks restructured the way SparseML's YOLOv8 integration did,
a Conv+BN QAT module whose eval forward is export-ready, and the fake-quant hooks.

- ``Conv``: Ultralytics' Conv with its activation owned by the block (Ultralytics shares one ``SiLU`` instance
  across all blocks, so ``model.2.cv1.act`` would not exist by name) and Conv+BN fused into ``ConvBn2d``. Parameter
  names stay ``<block>.conv.weight`` (BN moves to ``<block>.conv.bn.*``), so pruning masks keep applying by name.
- ``Bottleneck``: the residual add's two inputs pass through ``add_input_0`` / ``add_input_1`` (identities) so a
  recipe can quantize them (seed 000's ``model.2.m.0.add_input_0``).
- ``ConvBn2d``: torch.ao's QAT Conv+BN (BN folded into the fake-quantized weight during training, BN statistics
  freezable). In eval mode it runs the folded conv directly — ``conv(x, fq(w * gamma / std), folded bias)`` —
  which is what torch.ao computes there too, but traces to a single Conv with a Q/DQ weight, the pattern
  onnxruntime fuses into QLinearConv (torch.ao's own eval path leaves Div + BatchNormalization after the Conv).
- input/output fake quant: ``FakeQuantize`` children ``input_quant`` / ``output_quant`` applied by forward
  (pre-)hooks, so module names and types do not change. Hooks are module-level functions: checkpoints pickle.

Every class is picklable by reference (Ultralytics checkpoints are pickled modules): loading a quantized
checkpoint needs ``sparse_core`` importable.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.ao.nn.intrinsic as nni
import torch.ao.nn.intrinsic.qat as nniqat
import torch.ao.nn.qat as nnqat
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import (
    FakeQuantize,
    FakeQuantizeBase,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    QConfig,
)

from sparse_core.errors import NotSupportedYet
from sparse_core.quantization.scheme import QArgs

ROUTING = ("f", "i", "type", "np")  # attributes Ultralytics' BaseModel._predict_once reads on each layer


def fake_quant(args: QArgs, factory_kwargs: dict | None = None) -> FakeQuantize:
    """Plain ``FakeQuantize`` (never the fused default, which no ONNX exporter handles) for ``args``.
    ``factory_kwargs`` (device/dtype) is what torch.ao's QAT modules pass to their weight factory; unused."""
    if args.symmetric:
        dtype, qmin, qmax = torch.qint8, -128, 127
        qscheme = torch.per_channel_symmetric if args.per_channel else torch.per_tensor_symmetric
    else:
        dtype, qmin, qmax = torch.quint8, 0, 255
        qscheme = torch.per_channel_affine if args.per_channel else torch.per_tensor_affine
    if args.reduce_range:
        if args.symmetric:
            raise NotSupportedYet("reduce_range with symmetric quantization has no ONNX Q/DQ form (int8 -64..63)")
        qmax = 127
    observer = MovingAveragePerChannelMinMaxObserver if args.per_channel else MovingAverageMinMaxObserver
    extra = {"ch_axis": 0} if args.per_channel else {}
    return FakeQuantize(observer=observer, quant_min=qmin, quant_max=qmax, dtype=dtype, qscheme=qscheme, **extra)


def _identity(factory_kwargs: dict | None = None) -> nn.Module:
    return nn.Identity()


def _qconfig(weights: QArgs | None) -> QConfig:
    weight = functools.partial(fake_quant, weights) if weights is not None else _identity
    return QConfig(activation=_identity, weight=weight)


class ConvBn2d(nniqat.ConvBn2d):
    """torch.ao QAT Conv+BN whose eval forward is the folded, export-ready conv (see module docstring)."""

    @classmethod
    def fuse(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> "ConvBn2d":
        """Fuse float conv + bn (same Parameter objects) with no weight fake quant yet (``set_weight_quant``)."""
        fused = nni.ConvBn2d(conv, bn)
        fused.qconfig = _qconfig(None)
        out = cls.from_float(fused)
        out.qconfig = None  # the factory is not needed after construction and would only bloat checkpoints
        out.train(conv.training)
        return out

    def set_weight_quant(self, weights: QArgs | None) -> None:
        self.weight_fake_quant = fake_quant(weights) if weights is not None else nn.Identity()

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) with BN's running statistics folded in (what the runtime convolves with)."""
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = self.bias if self.bias is not None else torch.zeros_like(bn.running_mean)
        return self.weight * scale.reshape(-1, 1, 1, 1), bn.bias + (bias - bn.running_mean) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        weight, bias = self.folded()
        return self._conv_forward(x, self.weight_fake_quant(weight), bias)


class Conv(nn.Module):
    """Ultralytics Conv block for QAT: own activation, Conv+BN fused into ``conv`` (a ConvBn2d)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv = ConvBn2d.fuse(block.conv, block.bn)
        self.act = copy.deepcopy(block.act)  # one instance per block, so every activation has its own name
        for k in ROUTING:
            if k in vars(block):  # not hasattr: every module has a ``type`` method (a bound method pickles as code)
                setattr(self, k, getattr(block, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))

    forward_fuse = forward


class AddInput(nn.Identity):
    """Marks one input of a residual add so a recipe can quantize it (SparseML's ``add_input_N``)."""


class Bottleneck(nn.Module):
    """Ultralytics Bottleneck whose residual add inputs go through ``add_input_0`` (x) and ``add_input_1``."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.cv1, self.cv2, self.add = block.cv1, block.cv2, block.add
        self.add_input_0, self.add_input_1 = AddInput(), AddInput()
        for k in ROUTING:
            if k in vars(block):  # not hasattr: every module has a ``type`` method (a bound method pickles as code)
                setattr(self, k, getattr(block, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return self.add_input_0(x) + self.add_input_1(y) if self.add else y


def qat_conv(conv: nn.Module, weights: QArgs) -> nn.Module:
    """torch.ao's QAT Conv2d/Linear (weight fake quant) over the same Parameter objects."""
    kinds = {nn.Conv2d: nnqat.Conv2d, nn.Conv1d: nnqat.Conv1d, nn.Conv3d: nnqat.Conv3d, nn.Linear: nnqat.Linear}
    cls = kinds[type(conv)]
    conv.qconfig = _qconfig(weights)
    out = cls.from_float(conv)
    del conv.qconfig
    out.qconfig = None
    out.train(conv.training)
    return out


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if not torch.is_tensor(x):
        from sparse_core.errors import UserError

        raise UserError(f"QuantizationModifier: {type(module).__name__}: input fake quantization needs a tensor input, got "
                        f"{type(x).__name__}; add the module type to the QuantizationModifier's ignore list")
    return (module.input_quant(x), *args[1:])


def _quantize_output(module: nn.Module, args: tuple, output):
    return module.output_quant(output)


def add_input_quant(module: nn.Module, args: QArgs) -> None:
    module.input_quant = fake_quant(args)
    module.register_forward_pre_hook(_quantize_input)


def add_output_quant(module: nn.Module, args: QArgs) -> None:
    module.output_quant = fake_quant(args)
    module.register_forward_hook(_quantize_output)


def is_quantized(model: nn.Module) -> bool:
    """True when ``model`` has any fake-quant module (a QAT model: export writes Q/DQ for it)."""
    return any(isinstance(m, FakeQuantizeBase) for m in model.modules())


def fake_quant_modules(model: nn.Module) -> dict[str, FakeQuantizeBase]:
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantizeBase)}


def freeze_bn_stats(model: nn.Module) -> int:
    """Stop BN statistics updates in every QAT Conv+BN (torch's helper only matches its exact classes)."""
    n = 0
    for m in model.modules():
        if isinstance(m, nniqat.ConvBn2d):
            m.freeze_bn_stats()
            n += 1
    return n
