"""sparsity_sweep: one sparse model per target sparsity (ParallelFor), a dense baseline, and the ``champion`` alias
moved to the best by a metric under a constraint (default: max images/s with mAP50 >= 90% of dense).

DAG inside an exit handler (``close_run``): open_run -> fetch_checkpoint, prepare_dataset ->
  dense:  sparse_train (no recipe) -> export_model -> benchmark -> register_model (tag baseline=dense)
  ParallelFor(sparsities): sparse_train (recipe, variable ``sparsity_arg`` = target) -> qat -> export_model ->
          benchmark -> register_model
-> select_champion (fan-in of the loop's versions via dsl.Collected, after the dense baseline).
"""

from typing import List

from kfp import dsl

from components.benchmark.component import benchmark
from components.close_run.component import close_run
from components.export_model.component import export_model
from components.fetch_checkpoint.component import fetch_checkpoint
from components.open_run.component import open_run
from components.prepare_dataset.component import prepare_dataset
from components.qat.component import qat
from components.register_model.component import register_model
from components.select_champion.component import select_champion
from components.sparse_train.component import sparse_train
from pipelines.k8s import configure

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
        constraint: str = "map50>=0.9*dense",
        mlflow_uri: str = "",
        experiment: str = "sparsepipe",
        register_name: str = "sparsepipe-model",
        alias: str = "candidate",
        parent_run_id: str = "",
        cache_dir: str = "",
    ):
        track = {"mlflow_uri": mlflow_uri, "experiment": experiment}
        closer = configure(close_run(pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, parent_run_id=parent_run_id,
                                     **track), "close_run", k8s)
        with dsl.ExitHandler(closer, name="sparsity-sweep-steps"):
            opened = configure(open_run(
                pipeline=NAME, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, parent_run_id=parent_run_id,
                model=model, data=data, recipe=recipe, recipe_args=recipe_args, epochs=epochs, imgsz=imgsz,
                batch=batch, register_name=register_name,
                **track), "open_run", k8s)
            run = {"parent_run_id": opened.output, **track}
            cached = {"cache_dir": cache_dir, **run}
            fetch = configure(fetch_checkpoint(model=model, zoo=zoo, **cached), "fetch_checkpoint", k8s)
            data_task = configure(prepare_dataset(data=data, data_format=data_format, task=task,
                                                  val_fraction=val_fraction, classes=classes, **cached),
                                  "prepare_dataset", k8s)
            train_args = {"checkpoint": fetch.outputs["checkpoint"], "dataset": data_task.outputs["dataset"],
                          "imgsz": imgsz, "batch": batch, "workers": workers, "seed": seed, "zoo": zoo,
                          "device": device, **cached}

            dense = configure(sparse_train(epochs=epochs, **train_args), "sparse_train", k8s)
            dense.set_display_name("dense_baseline")
            dense_export = configure(export_model(model=dense.outputs["model"], **cached), "export_model", k8s)
            dense_export.set_display_name("dense_export")
            dense_bench = configure(benchmark(deployment=dense_export.outputs["deployment"],
                                              iterations=bench_iterations, **cached), "benchmark", k8s)
            dense_bench.set_display_name("dense_benchmark")
            dense_reg = configure(register_model(
                deployment=dense_export.outputs["deployment"], benchmark=dense_bench.outputs["result"],
                name=register_name, alias="", tags='{"baseline": "dense"}', **run), "register_model", k8s)
            dense_reg.set_display_name("dense_register")

            # kfp.local 2.17 replaces every task-output *parameter* entering a ParallelFor with the loop item
            # (kfp/local/orchestrator/task_spec_utils.py), which would turn the parent run id into "0.5". Locally
            # the CLI always passes the parent run id as the pipeline parameter, so the loop reads it from there;
            # a cluster build wires open_run's output as everywhere else.
            loop_run = run if k8s is not None else {**run, "parent_run_id": parent_run_id}
            loop_cached = {"cache_dir": cache_dir, **loop_run}
            loop_train_args = {**train_args, **loop_cached}
            with dsl.ParallelFor(sparsities, parallelism=parallelism) as target:
                train = configure(sparse_train(recipe=recipe, recipe_args=recipe_args, epochs=epochs,
                                               sparsity_target=target, sparsity_arg=sparsity_arg, **loop_train_args),
                                  "sparse_train", k8s)
                quant = configure(qat(model=train.outputs["model"], dataset=data_task.outputs["dataset"],
                                      epochs=epochs, imgsz=imgsz, batch=batch, workers=workers, seed=seed,
                                      device=device, **loop_cached), "qat", k8s)
                export = configure(export_model(model=quant.outputs["qat_model"], **loop_cached), "export_model",
                                   k8s)
                bench = configure(benchmark(deployment=export.outputs["deployment"], iterations=bench_iterations,
                                            **loop_cached), "benchmark", k8s)
                reg = configure(register_model(deployment=export.outputs["deployment"],
                                               benchmark=bench.outputs["result"], name=register_name, alias=alias,
                                               **loop_run), "register_model", k8s)
                train.after(opened)

            configure(select_champion(name=register_name, candidates=dsl.Collected(reg.output), metric=metric,
                                      constraint=constraint, **run), "select_champion", k8s).after(dense_reg)

    return sparsity_sweep
