"""open_run: the MLflow parent run of a pipeline run (every step logs a child run under it)."""

from kfp import dsl

from sparse_core.image import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def open_run(
    pipeline: str,
    pipeline_run_id: str,
    params: dict,
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
) -> str:
    """Open (or adopt) the parent run and return its id for the steps.

    Args:
        pipeline: Pipeline name (tag ``sparsepipe.pipeline``).
        pipeline_run_id: KFP run id (tag ``pipeline_run_id``; ``close_run`` finds the run by it).
        params: Pipeline parameters, logged on the parent run.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI`` (or no tracking: returns '').
        experiment: MLflow experiment name.
        parent_run_id: An already open parent run (``sparsepipe pipeline run --local`` opens one); adopted as is.

    Returns:
        The parent run id ('' when tracking is off).
    """
    from sparse_core import steps

    return steps.open_parent_run(mlflow_uri=mlflow_uri, experiment=experiment, pipeline=pipeline,
                                 pipeline_run_id=pipeline_run_id, parent_run_id=parent_run_id,
                                 params=params)["run_id"]
