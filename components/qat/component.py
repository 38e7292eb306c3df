"""qat: the recipe's quantization-aware stage (``Recipe.split("qat")``), continuing from sparse_train with masks held."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from sparse_core.image import component_image


@dsl.component(base_image=component_image("cuda"), install_kfp_package=False)
def qat(
    model: Input[Model],
    dataset: Input[Dataset],
    qat_model: Output[Model],
    metrics: Output[Metrics],
    epochs: int = 0,
    imgsz: int = 640,
    batch: int = 16,
    workers: int = 2,
    seed: int = 0,
    device: str = "",
    teacher: Optional[Input[Model]] = None,
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
    cache_dir: str = "",
) -> str:
    """Quantization-aware training of ``model``; a pass-through when its recipe has no QuantizationModifier.

    Quantization-aware stage: ``Recipe.split("qat")`` of the resolved recipe that ``sparse_train`` wrote. That is
    the epoch range, the LR still acting after the QAT start, one ``ConstantPruningModifier`` per pruning modifier
    (so the zeros stay zero) and the ``QuantizationModifier``. It continues from ``sparse_train``'s ``model.pt``. A
    recipe without quantization has no QAT stage, so the input passes through unchanged (hard links) and the child
    run is tagged ``sparsepipe.qat=skipped``.

    Args:
        model: sparse_train output (``model.pt`` + ``recipe.full.yaml``).
        dataset: prepare_dataset output.
        qat_model: Output folder, same layout as sparse_train's.
        metrics: map50, map50_95, sparsity of the output model.
        epochs: Epochs when the recipe does not set them.
        imgsz: Training image size.
        batch: Batch size.
        workers: Data loader workers.
        seed: Random seed.
        device: Ultralytics device; empty = GPU when present.
        teacher: Optional fetch_checkpoint output of a distillation teacher.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI`` (or no tracking).
        experiment: MLflow experiment name.
        parent_run_id: MLflow run of the pipeline; this step logs a child run under it.
        cache_dir: Step cache folder; ``none`` disables it.

    Returns:
        ``trained`` or ``skipped`` (no quantization stage in the recipe).
    """
    from sparse_core import steps

    result = steps.qat(model=model.path, dataset=dataset.path, out=qat_model.path, train=steps.TrainSettings(
        epochs=epochs, imgsz=imgsz, batch=batch, workers=workers, seed=seed, device=device,
        teacher=teacher.path if teacher is not None else ""),
        ctx=steps.StepContext(mlflow_uri, experiment, parent_run_id, cache_dir))
    for key in ("map50", "map50_95", "sparsity"):
        metrics.log_metric(key, float(result.get(key, 0.0)))
    qat_model.metadata.update({"qat": result["qat"], "sparsity": result.get("sparsity", 0.0)})
    return result["qat"]
