"""sparsity_sweep: one sparse model per target sparsity (ParallelFor), a dense baseline, and the ``champion`` alias
moved to the best by a metric within an accuracy budget stated against the dense model (default: the fastest,
max images/s, among the models that lose at most ``max_map_drop`` = 1.0 mAP50-95 point; the dense model itself
qualifies, so there is always a champion); ``constraint`` adds conditions (e.g. ``sparsity>=0.5``).

DAG inside an exit handler (``close_run``): open_run -> fetch_checkpoint, prepare_dataset ->
  dense:  sparse_train (no recipe) -> export_model -> benchmark -> register_model (tag baseline=dense)
  ParallelFor(sparsities): sparse_train (recipe, variable ``sparsity_arg`` = target) -> qat -> export_model ->
          benchmark -> register_model
-> select_champion (fan-in of the loop's versions via dsl.Collected, after the dense baseline).
"""

from typing import List

from kfp import dsl

from components.qat.component import qat
from components.select_champion.component import select_champion
from components.sparse_train.component import sparse_train
from pipelines.chain import Run, deploy, fetch_inputs, fit_args, tracked

NAME = "sparsity_sweep"


def build(k8s=None):
    """The pipeline function; ``k8s`` (K8sSettings) adds Kubernetes settings for compile/submit.

    The loop runs its branches in parallel on Kubernetes and one at a time locally (2 training processes on a
    small machine only fight for the same cores)."""
    parallelism = 0 if k8s is not None else 1

    @dsl.pipeline(name="sparsity-sweep", description="Train one sparse model per target sparsity plus a dense "
                  "baseline; register all; move 'champion' to the best under a metric constraint.")
    def sparsity_sweep(
        model: str,
        data: str,
        recipe: str,
        sparsities: List[float] = [0.5, 0.8],
        sparsity_arg: str = "final_sparsity",
        zoo: str = "",
        data_format: str = "yolo",
        task: str = "detect",
        val_fraction: float = 0.2,
        classes: str = "",
        recipe_args: str = "",
        epochs: int = 0,
        imgsz: int = 640,
        batch: int = 16,
        workers: int = 2,
        seed: int = 0,
        device: str = "",
        bench_iterations: int = 50,
        metric: str = "images_per_s",
        constraint: str = "",
        max_map_drop: float = 1.0,
        mlflow_uri: str = "",
        experiment: str = "sparsepipe",
        register_name: str = "sparsepipe-model",
        alias: str = "candidate",
        parent_run_id: str = "",
        cache_dir: str = "",
    ):
        with tracked(NAME, "sparsity-sweep", k8s, mlflow_uri=mlflow_uri, experiment=experiment,
                     parent_run_id=parent_run_id, cache_dir=cache_dir, model=model, data=data, recipe=recipe,
                     recipe_args=recipe_args, epochs=epochs, imgsz=imgsz, batch=batch,
                     register_name=register_name) as r:
            fetch, data_task = fetch_inputs(r, model=model, zoo=zoo, data=data, data_format=data_format, task=task,
                                            val_fraction=val_fraction, classes=classes)
            fit = fit_args(data_task, imgsz=imgsz, batch=batch, workers=workers, seed=seed, device=device)
            dense = r.step(sparse_train(checkpoint=fetch.outputs["checkpoint"], epochs=epochs, zoo=zoo, **fit,
                                        **r.cached), "sparse_train", "dense_baseline")
            dense_reg = deploy(r, dense.outputs["model"], bench_iterations=bench_iterations, name=register_name,
                               alias="", tags='{"baseline": "dense"}', prefix="dense_")
            reg = _sweep_loop(r, sparsities, parallelism, parent_run_id, checkpoint=fetch.outputs["checkpoint"],
                              fit=fit, recipe=recipe, recipe_args=recipe_args, epochs=epochs, zoo=zoo,
                              sparsity_arg=sparsity_arg, bench_iterations=bench_iterations, name=register_name,
                              alias=alias)
            r.step(select_champion(name=register_name, candidates=dsl.Collected(reg.output), metric=metric,
                                   constraint=constraint, max_map_drop=max_map_drop, **r.run),
                   "select_champion").after(dense_reg)

    return sparsity_sweep


def _sweep_loop(r: Run, sparsities, parallelism: int, parent_run_id, *, checkpoint, fit: dict, recipe, recipe_args,
                epochs, zoo, sparsity_arg, bench_iterations, name, alias):
    """ParallelFor(sparsities): sparse_train (``sparsity_arg`` = the target) -> qat -> deploy; the register task.

    kfp.local 2.17 replaces every task-output *parameter* entering a ParallelFor with the loop item
    (kfp/local/orchestrator/task_spec_utils.py), which would turn the parent run id into "0.5". Locally the CLI
    always passes the parent run id as the pipeline parameter, so the loop reads it from there; a cluster build
    wires open_run's output as everywhere else."""
    loop_run = r.run if r.k8s is not None else {**r.run, "parent_run_id": parent_run_id}
    loop_cached = {"cache_dir": r.cache_dir, **loop_run}
    with dsl.ParallelFor(sparsities, parallelism=parallelism) as target:
        train = r.step(sparse_train(checkpoint=checkpoint, recipe=recipe, recipe_args=recipe_args, epochs=epochs,
                                    zoo=zoo, sparsity_target=target, sparsity_arg=sparsity_arg, **fit, **loop_cached),
                       "sparse_train")
        quant = r.step(qat(model=train.outputs["model"], epochs=epochs, **fit, **loop_cached), "qat")
        reg = deploy(r, quant.outputs["qat_model"], bench_iterations=bench_iterations, name=name, alias=alias,
                     run=loop_run)
        train.after(r.opened)
    return reg
