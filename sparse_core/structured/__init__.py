"""Structured pruning: whole channels of YOLO models, coupled channels together, then physically removed.

``GMPruningModifier`` with ``mask_type: filter`` (executor in ``executor``) masks channels during training;
``thin`` removes them after it, so every runtime runs a smaller dense model. ``graph`` finds the couplings.
"""

from sparse_core.modifiers.registry import register_executor
from sparse_core.structured.executor import CHANNEL_MULTIPLE, StructuredGMPExecutor, keep_count
from sparse_core.structured.graph import ChannelGraph, trace
from sparse_core.structured.thin import THINNED_ATTR, conv_macs, conv_params, thin_model


def _structured_executor(mod, manager, where: str) -> StructuredGMPExecutor:
    return StructuredGMPExecutor(mod, where, manager.model, manager.params)


for _name in ("GMPruningModifier", "MagnitudePruningModifier", "GlobalMagnitudePruningModifier"):
    register_executor(_name, _structured_executor, when=lambda mod: mod.mask_type == "filter")

__all__ = ["CHANNEL_MULTIPLE", "THINNED_ATTR", "ChannelGraph", "StructuredGMPExecutor", "conv_macs", "conv_params",
           "keep_count", "thin_model", "trace"]
