"""choose_deployment: the fastest form of the model that holds accuracy on the target engine, chosen by measurement."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from sparse_core.image import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def choose_deployment(
    deployment: Input[Model],
    float_model: Input[Model],
    chosen: Output[Model],
    engine: str = "onnxruntime",
    precision: str = "auto",
    seconds: float = 5.0,
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
) -> str:
    """Time every form of the model on this machine and keep the fastest within the accuracy gate.

    Candidates: the float model (``float_model`` exported at the deployment's size, when ``deployment`` is
    quantized), the QDQ INT8 export and its form for ``engine`` (``model.openvino.onnx`` / ``model.deepsparse.onnx``;
    on AMX CPUs OpenVINO's INT8 files again with oneDNN capped at AVX-512 VNNI). They are timed interleaved and
    scored on the data the export was gated on; an INT8 form ships only when it beats the float model by more than
    3%. ``deployment.json`` in the output records the table, the CPU ISA and why; the registered version carries
    the chosen form, engine, precision and ISA as tags, and the parent run gets every candidate's img/s.

    Args:
        deployment: export_model output (of the qat model).
        float_model: sparse_train output: the float model QAT started from.
        chosen: Output deployment folder: the chosen form as ``model.onnx``, ``deployment.json``, ``candidates/``.
        engine: Target engine: ``onnxruntime``, ``openvino`` or ``deepsparse``.
        precision: ``auto`` (fastest within the gate), ``float`` or ``int8`` (only that form may ship).
        seconds: Timed seconds per candidate.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI`` (or no tracking).
        experiment: MLflow experiment name.
        parent_run_id: MLflow run of the pipeline; this step logs a child run under it.

    Returns:
        The chosen candidate's name (e.g. ``float``, ``int8-openvino-form``).
    """
    from sparse_core import steps

    result = steps.choose_deployment(deployment=deployment.path, out=chosen.path, engine=engine,
                                     float_model=float_model.path, precision=precision, seconds=seconds,
                                     ctx=steps.StepContext(mlflow_uri, experiment, parent_run_id))
    chosen.metadata.update({"form": result["form"], "engine": engine, "sha256": result["sha256"]})
    return result["chosen"]
