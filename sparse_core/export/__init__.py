"""ONNX export of sparsepipe checkpoints into deployment folders (model.onnx, recipe.yaml, data.yaml, export.json).

``export_model``/``read_deployment`` load lazily: the benchmark imports ``graph`` only, so it runs without torch.
"""

from sparse_core.export.graph import deployment_model

__all__ = ["deployment_model", "export_model", "read_deployment"]


def __getattr__(name: str):
    if name in ("export_model", "read_deployment"):
        from sparse_core.export import export as _export

        return getattr(_export, name)
    raise AttributeError(name)
