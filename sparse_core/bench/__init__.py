"""Inference benchmark of exported models on stock CPU runtimes (onnxruntime; DeepSparse when importable)."""

from sparse_core.bench.runner import benchmark

__all__ = ["benchmark"]
