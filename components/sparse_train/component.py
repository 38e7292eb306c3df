"""sparse_train: the recipe's pruning / learning-rate stage (``Recipe.split("sparse")``) on Ultralytics."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from sparse_core.image import component_image


@dsl.component(base_image=component_image("cuda"), install_kfp_package=False)
def sparse_train(
    checkpoint: Input[Model],
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    recipe: str = "",
    recipe_args: str = "",
    epochs: int = 0,
    imgsz: int = 640,
    batch: int = 16,
    workers: int = 2,
    seed: int = 0,
    zoo: str = "",
    device: str = "",
    sparsity_target: float = -1.0,
    sparsity_arg: str = "final_sparsity",
    max_map_drop: float = -1.0,
    teacher: Optional[Input[Model]] = None,
    mlflow_uri: str = "",
    experiment: str = "sparsepipe",
    parent_run_id: str = "",
    cache_dir: str = "",
):
    """Train from ``checkpoint`` on ``dataset`` with every recipe modifier except quantization.

    Trains the recipe's pruning and learning-rate stage on Ultralytics: ``Recipe.split("sparse")``, i.e. every
    modifier except ``QuantizationModifier``, with the epoch range and LR schedules cut at the QAT start epoch. The
    output holds the recipe's end state (``last.pt``, re-validated) and the whole resolved recipe, which ``qat``
    splits again.

    Args:
        checkpoint: fetch_checkpoint output (base model).
        dataset: prepare_dataset output.
        model: Output folder: ``model.pt`` (the recipe's end state), ``summary.json``, ``recipe.yaml`` (this stage),
            ``recipe.full.yaml`` (the whole resolved recipe, split again by ``qat``).
        metrics: map50, map50_95, sparsity of the output model.
        recipe: Recipe path, ``zoo:`` stub or recipe text; empty for plain dense fine-tuning.
        recipe_args: JSON object overriding recipe variables, e.g. ``{"num_epochs": 3}``.
        epochs: Epochs when the recipe does not set them (or without a recipe).
        imgsz: Training image size.
        batch: Batch size.
        workers: Data loader workers.
        seed: Random seed.
        zoo: Zoo URI for ``zoo:`` recipe stubs.
        device: Ultralytics device (``cpu``, ``0``); empty = GPU when present.
        sparsity_target: When >= 0, sets recipe variable ``sparsity_arg`` (the sweep's knob).
        sparsity_arg: Recipe variable that ``sparsity_target`` sets.
        max_map_drop: When >= 0, the accuracy budget in mAP50-95 points against the start model: attempts with the
            recipe's sparsity scaled by 1.0 / 0.6 / 0.3 until one is within it (each logged as step k of the
            ``budget.*`` metrics); the step fails when none is.
        teacher: Optional fetch_checkpoint output of a distillation teacher.
        mlflow_uri: MLflow tracking URI; empty means ``$MLFLOW_TRACKING_URI`` (or no tracking).
        experiment: MLflow experiment name.
        parent_run_id: MLflow run of the pipeline; this step logs a child run under it.
        cache_dir: Step cache folder; ``none`` disables it.
    """
    from sparse_core import steps

    result = steps.sparse_train(
        checkpoint=checkpoint.path, dataset=dataset.path, out=model.path,
        recipe=steps.RecipeSettings(recipe, recipe_args, zoo, sparsity_target, sparsity_arg, max_map_drop),
        train=steps.TrainSettings(epochs=epochs, imgsz=imgsz, batch=batch, workers=workers, seed=seed, device=device,
                                  teacher=teacher.path if teacher is not None else ""),
        ctx=steps.StepContext(mlflow_uri, experiment, parent_run_id, cache_dir))
    for key in ("map50", "map50_95", "sparsity"):
        metrics.log_metric(key, float(result.get(key, 0.0)))
    model.metadata.update({"sparsity": result["sparsity"], "recipe_sha256": result.get("recipe_sha256") or ""})
