"""fetch_checkpoint: zoo stub / path / s3:// URI / model yaml name -> the checkpoint artifact training starts from."""

from kfp import dsl
from kfp.dsl import Model, Output

from sparse_core.image import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def fetch_checkpoint(
    model: str,
    checkpoint: Output[Model],
    zoo: str = "",
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
    cache_dir: str = "",
) -> str:
    """Resolve the base model into a folder with ``fetch.json`` (+ ``model.pt`` or the model yaml).

    Resolves the base model (a ``zoo:`` stub, a ``.pt`` path, an ``s3://`` URI or an Ultralytics model yaml name)
    into a folder that training starts from. The copy is verified by sha256 and cached by content.

    Args:
        model: ``zoo:`` stub, ``.pt`` path, ``s3://`` URI or an Ultralytics model yaml name (random init);
            empty for "no model" (an optional teacher).
        checkpoint: Output folder: ``fetch.json`` and the model file.
        zoo: Zoo URI (``s3://bucket/prefix`` or a folder); default ``$SPARSEPIPE_ZOO``.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI`` (or no tracking).
        experiment: MLflow experiment name.
        parent_run_id: MLflow run of the pipeline; this step logs a child run under it.
        cache_dir: Step cache folder; ``none`` disables it.

    Returns:
        sha256 of the fetched checkpoint ('' for a model yaml name or no model).
    """
    from sparse_core import steps

    result = steps.fetch_checkpoint(model=model, out=checkpoint.path, zoo=zoo,
                                    ctx=steps.StepContext(mlflow_uri, experiment, parent_run_id, cache_dir))
    checkpoint.metadata.update({k: result[k] for k in ("source", "sha256", "kind")})
    return result["sha256"]
