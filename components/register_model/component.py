"""register_model: the exported model -> a new MLflow Model Registry version with lineage tags and an alias."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from sparse_core.image import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def register_model(
    deployment: Input[Model],
    benchmark: Input[Artifact],
    name: str,
    alias: str = "candidate",
    tags: str = "",
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
) -> str:
    """Register ``deployment`` (ONNX flavor, ``model.pt`` alongside) as a version of ``name``.

    Registers the deployment folder in the MLflow Model Registry as an ONNX-flavor model, with ``model.pt``
    alongside. The version gets lineage tags (recipe sha256, data hash, base model, git commit, pipeline run id,
    onnx sha256) and an alias. This step's child run carries the metrics a champion is chosen by. Registering the
    same ONNX and recipe again reuses that version instead of adding a duplicate.

    Args:
        deployment: export_model output.
        benchmark: benchmark output (its metrics are logged on the registering run).
        name: Registered model name.
        alias: Alias moved to the new version (e.g. ``candidate``); empty for none.
        tags: JSON object of extra version tags, e.g. ``{"baseline": "dense"}``.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI``. Required.
        experiment: MLflow experiment name.
        parent_run_id: MLflow run of the pipeline; this step logs a child run under it.

    Returns:
        The registered version number.
    """
    from sparse_core import steps

    result = steps.register_model(model=deployment.path, benchmark=benchmark.path, name=name, alias=alias,
                                  tags=tags,
                                  ctx=steps.StepContext(mlflow_uri, experiment, parent_run_id))
    return result["version"]
