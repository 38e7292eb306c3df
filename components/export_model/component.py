"""export_model: checkpoint -> ONNX deployment folder (zeros kept exact; QDQ for quantized models)."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from sparse_core.image import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def export_model(
    model: Input[Model],
    deployment: Output[Model],
    imgsz: int = 0,
    batch: int = 1,
    opset: int = 17,
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
    cache_dir: str = "",
) -> str:
    """Export ``model/model.pt`` to ``deployment`` (model.onnx, recipe.yaml, data.yaml, export.json, model.pt).

    Exports the trained checkpoint to an ONNX deployment folder (``model.onnx``, ``recipe.yaml``, ``data.yaml``,
    ``export.json``, plus ``model.pt`` and the training ``summary.json``). ``sparsepipe benchmark``, ``sparsepipe
    val`` and the registry all take this folder.

    Args:
        model: sparse_train or qat output.
        deployment: Output deployment folder, accepted by ``sparsepipe benchmark`` / ``val`` / the registry.
        imgsz: Static input size; 0 = the training image size.
        batch: Static batch size.
        opset: ONNX opset.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI`` (or no tracking).
        experiment: MLflow experiment name.
        parent_run_id: MLflow run of the pipeline; this step logs a child run under it.
        cache_dir: Step cache folder; ``none`` disables it.

    Returns:
        sha256 of model.onnx.
    """
    from sparse_core import steps

    info = steps.export_model(model=model.path, out=deployment.path, imgsz=imgsz, batch=batch, opset=opset,
                              ctx=steps.StepContext(mlflow_uri, experiment, parent_run_id, cache_dir))
    deployment.metadata.update({"sha256": info["sha256"], "quantized": info["quantized"], "imgsz": info["imgsz"]})
    return info["sha256"]
