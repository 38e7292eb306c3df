"""decide_precision: will INT8 pay on the target engine? Decided by a seconds-long probe before QAT is paid for."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from sparse_core.image import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def decide_precision(
    model: Input[Model],
    decided: Output[Model],
    engine: str = "onnxruntime",
    precision: str = "auto",
    imgsz: int = 640,
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
) -> str:
    """Decide before QAT whether INT8 will pay on ``engine``; where it will not, the qat step passes through.

    ``precision`` auto times the float model against its post-training INT8 forms (the QAT recipe's fake
    quantization, calibrated, exported with the engine's forms) on this machine: INT8 pays when its fastest form
    beats the float model by more than 3%. Where it does not pay (or ``precision`` is float) the QAT stage is cut
    from ``recipe.full.yaml``, so ``qat`` passes the float model through and spends no epochs. For DeepSparse the
    QAT stage gets per-tensor weights (the only weight scales DeepSparse compiles natively). ``precision.json``
    records the probe's table and why; the child run is tagged ``sparsepipe.qat_decision``.

    Args:
        model: sparse_train output (``model.pt`` + ``recipe.full.yaml``).
        decided: Output folder for the qat step, same layout, plus ``precision.json``.
        engine: Target engine: ``onnxruntime``, ``openvino`` or ``deepsparse``.
        precision: ``auto`` (probe), ``float`` (skip QAT) or ``int8`` (always QAT).
        imgsz: Deployment image size the probe times at.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI`` (or no tracking).
        experiment: MLflow experiment name.
        parent_run_id: MLflow run of the pipeline; this step logs a child run under it.

    Returns:
        ``run``, ``skip`` or ``none`` (the recipe has no QAT stage).
    """
    from sparse_core import steps

    result = steps.decide_precision(model=model.path, out=decided.path, engine=engine, precision=precision,
                                    imgsz=imgsz, ctx=steps.StepContext(mlflow_uri, experiment, parent_run_id))
    decided.metadata.update({"qat": result["qat"]})
    return result["qat"]
