"""Quantization-aware training for SparseML QuantizationModifier recipes (registered with the RecipeManager).

Why ``torch.ao.quantization`` (eager-mode pieces) and not torchao: torchao is where PyTorch's quantization work
continues, but (as of torch 2.14 / torchao 0.18) its QAT targets Linear layers of LLMs (``FakeQuantizeConfig`` /
``QATConfig`` swap ``nn.Linear``) and its CNN path is pt2e: ``prepare_qat_pt2e`` needs a ``torch.export``-ed
graph module, which replaces the Ultralytics model object the trainer, EMA, checkpoints and our name-based recipes
and pruning masks rely on, and which then exports Q/DQ only through the dynamo exporter (which failed on our QAT
conv model, see GUIDE). torch.ao's ``FakeQuantize`` + observers and its QAT ``ConvBn2d``/``Conv2d`` are still
shipped with torch 2.14, keep module names and Parameter objects, and the TorchScript ONNX exporter turns them
into QuantizeLinear/DequantizeLinear that onnxruntime runs with integer kernels. We use only those building
blocks — not ``prepare_qat``/qconfig propagation, whose default ``FusedMovingAvgObsFakeQuantize`` has no ONNX
export and whose placement rules are not SparseML's. If torch drops torch.ao.quantization, the replacement is
``torchao.quantization.pt2e`` (same observers/fake-quant semantics): only ``modules.py`` depends on it.

Layout: ``scheme`` (recipe → per-module schemes), ``modules`` (QAT blocks, fake-quant hooks), ``prepare`` (model
surgery, EMA sync), ``handler`` (the RecipeManager executor). docs/quantization.md has the user-facing summary.
"""

from sparse_core.modifiers.registry import register_executor
from sparse_core.quantization.handler import QuantizationHandler
from sparse_core.quantization.prepare import Report, prepare, sync_quant_state
from sparse_core.quantization.scheme import ModuleScheme, QArgs, resolve

register_executor("QuantizationModifier", QuantizationHandler)

__all__ = ["ModuleScheme", "QArgs", "QuantizationHandler", "Report", "prepare", "resolve", "sync_quant_state"]
