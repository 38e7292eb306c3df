"""Inference benchmark of exported models on CPU engines (onnxruntime, OpenVINO; DeepSparse via its side venv),
with the reasons a model is or is not fast (profile, integer-kernel share, verdict)."""

from sparse_core.bench.runner import benchmark, benchmark_many

__all__ = ["benchmark", "benchmark_many"]
