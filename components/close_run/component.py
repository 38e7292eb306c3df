"""close_run: the pipeline's exit handler; ends the MLflow parent run FINISHED or FAILED."""

from kfp import dsl

from sparse_core.image import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def close_run(
    status: dsl.PipelineTaskFinalStatus,
    pipeline_run_id: str,
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
) -> str:
    """Mark the parent run with the pipeline's final state, also when a step failed.

    The pipeline's exit handler. It ends the parent run FINISHED or FAILED whatever happened, so a run is never left
    RUNNING. On failure it copies the failing step's one-line cause onto the parent as ``sparsepipe.error``. It
    first copies the delivered model's headline metrics onto the parent (mAP50-95, per-engine images/s and mAP,
    speedup vs dense and vs the OpenVINO INT8 baseline where known, gzip MB, sparsity) with its registered version
    as tags, so the MLflow UI's compare view of two pipeline runs lines them up (``sparse_core.tracking.rollup``).

    Args:
        status: Final state of the pipeline's tasks (set by KFP).
        pipeline_run_id: KFP run id the parent run is tagged with.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI``.
        experiment: MLflow experiment name.
        parent_run_id: The parent run when known up front (local CLI); else found by ``pipeline_run_id``.

    Returns:
        The status written (FINISHED / FAILED), or why nothing was written.
    """
    from sparse_core import steps

    return steps.close_parent_run(mlflow_uri=mlflow_uri, experiment=experiment, pipeline_run_id=pipeline_run_id,
                                  parent_run_id=parent_run_id, state=status.state,
                                  error=status.error_message or "")["status"]
