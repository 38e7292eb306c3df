"""select_champion: move the ``champion`` alias to the best registered version meeting a metric constraint."""

from typing import List

from kfp import dsl

from sparse_core.image import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def select_champion(
    name: str,
    candidates: List[str],
    metric: str = "images_per_s",
    constraint: str = "map50>=0.9*dense",
    higher_is_better: bool = True,
    max_map_drop: float = -1.0,
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
) -> str:
    """Pick the champion among the registered versions of ``name``.

    Moves the ``champion`` alias to the registered version with the best metric among those meeting a constraint,
    e.g. max ``images_per_s`` with ``map50>=0.9*dense`` (dense = the version tagged ``baseline=dense``), or within
    an accuracy budget against the dense model (``max_map_drop`` mAP50-95 points). Used by ``sparsity_sweep``
    after its ParallelFor: the fastest model that loses at most ``max_map_drop`` points.

    Args:
        name: Registered model name.
        candidates: Versions registered by this sweep (fan-in of the ParallelFor; makes this step wait for them).
        metric: Metric to maximise (or minimise), e.g. ``images_per_s``.
        constraint: e.g. ``map50>=0.9*dense`` (dense = the version tagged ``baseline=dense``); empty for none.
        higher_is_better: Maximise ``metric`` when true.
        max_map_drop: Accuracy budget against the dense model: at most this many mAP50-95 points lost (1.0 = 0.01);
            added to ``constraint``; negative for none.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI``. Required.
        experiment: MLflow experiment name.
        parent_run_id: MLflow run of the pipeline; this step logs a child run under it.

    Returns:
        The champion's version number.
    """
    from sparse_core import steps

    print(f"select_champion: candidates from this sweep: {candidates}")
    result = steps.select_champion(name=name, metric=metric, constraint=constraint,
                                   higher_is_better=higher_is_better,
                                   ctx=steps.StepContext(mlflow_uri, experiment, parent_run_id),
                                   max_map_drop=max_map_drop)
    return result["version"]
