"""generate_recipe: a per-group structured recipe for a latency target (``sparsepipe recipe generate``)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from sparse_core.image import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def generate_recipe(
    analysis: Input[Artifact],
    recipe: Output[Artifact],
    target_speedup: float = 2.0,
    target_latency_ms: float = 0.0,
    engine: str = "",
    qat: bool = False,
    epochs: int = 10,
    qat_epochs: int = 3,
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
) -> str:
    """Choose per-group kept widths that meet the latency target at the least predicted accuracy loss.

    Greedy marginal-ratio solver over the analysis' calibrated latency model; the recipe holds structured GMP per
    group (mask_type filter), output distillation from the dense model and, with ``qat``, a QAT stage.

    Args:
        analysis: analyze output.
        recipe: Output folder: ``recipe.yaml`` (header: predicted latency and mAP drop), ``plan.json``.
        target_speedup: Dense latency / target latency (used when ``target_latency_ms`` is 0).
        target_latency_ms: Target latency in ms; 0 = use ``target_speedup``.
        engine: Engine whose latency model to use; empty = the analysis' first.
        qat: Add a QAT stage after the structured stage.
        epochs: Epochs of the structured + KD stage.
        qat_epochs: Epochs of the QAT stage.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI`` (or no tracking).
        experiment: MLflow experiment name.
        parent_run_id: MLflow run of the pipeline; this step logs a child run under it.

    Returns:
        The recipe text (sparse_train's ``recipe`` parameter).
    """
    from sparse_core import steps

    return steps.generate_recipe(analysis=analysis.path, out=recipe.path, target_speedup=target_speedup,
                                 target_latency_ms=target_latency_ms, engine=engine, qat=qat, epochs=epochs,
                                 qat_epochs=qat_epochs, mlflow_uri=mlflow_uri, experiment=experiment,
                                 parent_run_id=parent_run_id)
