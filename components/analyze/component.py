"""analyze: per coupled channel group, accuracy sensitivity and latency share (``sparsepipe analyze``)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from sparse_core.image import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def analyze(
    checkpoint: Input[Model],
    dataset: Input[Dataset],
    analysis: Output[Artifact],
    engine: str = "onnxruntime",
    imgsz: int = 640,
    levels: str = "0.25,0.5,0.75",
    val_images: int = 16,
    calib_images: int = 8,
    seconds: float = 3.0,
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
):
    """Measure what removing each channel group's channels costs in mAP and saves in latency.

    One-shot removal of each coupled group's lowest-magnitude channels at each level (BN recalibrated; val loss
    and mAP50-95 on a val subset), and a per-layer engine profile calibrated on whole-model timings.

    Args:
        checkpoint: fetch_checkpoint output (the dense model).
        dataset: prepare_dataset output.
        analysis: Output folder: ``analysis.json``, ``sensitivity.png``, ``latency_share.png``.
        engine: Latency engine(s): ``onnxruntime``, ``openvino`` or both comma-separated.
        imgsz: Deployment image size for latency.
        levels: Fractions of channels removed per group, comma-separated.
        val_images: Val images scored per removal.
        calib_images: Train images for BN recalibration.
        seconds: Timing per whole-model latency measurement.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI`` (or no tracking).
        experiment: MLflow experiment name.
        parent_run_id: MLflow run of the pipeline; this step logs a child run under it.
    """
    from sparse_core import steps

    steps.analyze(checkpoint=checkpoint.path, dataset=dataset.path, out=analysis.path, engine=engine, imgsz=imgsz,
                  levels=levels, val_images=val_images, calib_images=calib_images, seconds=seconds,
                  mlflow_uri=mlflow_uri, experiment=experiment, parent_run_id=parent_run_id)
