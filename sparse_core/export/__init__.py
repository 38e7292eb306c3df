"""ONNX export of sparsepipe checkpoints into deployment folders (model.onnx, recipe.yaml, data.yaml, export.json)."""

from sparse_core.export.export import export_model, read_deployment

__all__ = ["export_model", "read_deployment"]
