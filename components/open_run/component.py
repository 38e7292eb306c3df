"""open_run: the MLflow parent run of a pipeline run (every step logs a child run under it)."""

from kfp import dsl

from sparse_core.image import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def open_run(
    pipeline: str,
    pipeline_run_id: str,
    model: str = "",
    data: str = "",
    recipe: str = "",
    recipe_args: str = "",
    epochs: int = 0,
    imgsz: int = 0,
    batch: int = 0,
    register_name: str = "",
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
) -> str:
    """Open (or adopt) the parent run and return its id for the steps.

    Every step logs a child run under that id. ``sparsepipe pipeline run --local`` opens the parent itself and
    this step adopts it. On a cluster this step creates the parent, tagged with the KFP run id.

    Parameters travel as separate inputs, not one dict: a dict holding pipeline channels is filled in by text
    substitution in the local runner, which breaks on values with quotes (JSON recipe_args).

    Args:
        pipeline: Pipeline name (tag ``sparsepipe.pipeline``).
        pipeline_run_id: KFP run id (tag ``pipeline_run_id``; ``close_run`` finds the run by it).
        model: Pipeline parameter, logged on the parent run (as are the ones below).
        data: Source data set.
        recipe: Recipe path, stub or text (long text is truncated in the param).
        recipe_args: Recipe variable overrides (JSON).
        epochs: Epochs parameter.
        imgsz: Image size.
        batch: Batch size.
        register_name: Registered model name.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI`` (or no tracking: returns '').
        experiment: MLflow experiment name.
        parent_run_id: An already open parent run (``sparsepipe pipeline run --local`` opens one); adopted as is.

    Returns:
        The parent run id ('' when tracking is off).
    """
    from sparse_core import steps

    return steps.open_parent_run(mlflow_uri=mlflow_uri, experiment=experiment, pipeline=pipeline,
                                 pipeline_run_id=pipeline_run_id, parent_run_id=parent_run_id,
                                 params={"model": model, "data": data, "recipe": recipe,
                                         "recipe_args": recipe_args, "epochs": epochs, "imgsz": imgsz,
                                         "batch": batch, "register_name": register_name})["run_id"]
