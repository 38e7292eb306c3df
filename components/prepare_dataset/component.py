"""prepare_dataset: YOLO / COCO / VOC source (path or s3:// prefix) -> a validated Ultralytics data set artifact."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from sparse_core.image import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def prepare_dataset(
    data: str,
    dataset: Output[Dataset],
    data_format: str = "yolo",
    task: str = "detect",
    val_fraction: float = 0.2,
    classes: str = "",
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
    cache_dir: str = "",
) -> str:
    """Validate and convert the source data set; every problem is reported with its file and location.

    Validates a YOLO, COCO JSON or Pascal VOC data set (local path or ``s3://`` prefix) and writes an Ultralytics
    data set. Every problem is reported with its file and location, and a corrupt data set fails the pipeline with
    that one line. The content hash goes into lineage and into the cache key.

    Args:
        data: Source data set: a folder, a ``data.yaml``, a COCO JSON / VOC folder, or an ``s3://`` prefix.
        dataset: Output folder: ``data.yaml``, ``images/``, ``labels/``, ``stats.json``.
        data_format: ``yolo``, ``coco`` or ``voc``.
        task: ``detect`` or ``segment``.
        val_fraction: Share of images held out for validation when the source has no split.
        classes: Comma-separated class names (order = class ids); empty to take them from the source.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI`` (or no tracking).
        experiment: MLflow experiment name.
        parent_run_id: MLflow run of the pipeline; this step logs a child run under it.
        cache_dir: Step cache folder; ``none`` disables it.

    Returns:
        The data set's content hash (same images + labels + names give the same hash anywhere).
    """
    from sparse_core import steps

    stats = steps.prepare_dataset(data=data, out=dataset.path, data_format=data_format, task=task,
                                  val_fraction=val_fraction, classes=classes,
                                  ctx=steps.StepContext(mlflow_uri, experiment, parent_run_id, cache_dir))
    dataset.metadata.update({"content_hash": stats["content_hash"], "images": stats["images"],
                             "instances": stats["instances"]})
    return stats["content_hash"]
