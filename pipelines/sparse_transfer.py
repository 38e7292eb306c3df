"""sparse_transfer (seed 000's path): zoo checkpoint -> data -> transfer recipe -> QAT -> export -> bench -> register.

DAG inside an exit handler (``close_run`` ends the MLflow parent run FINISHED/FAILED whatever happens):
open_run -> fetch_checkpoint -> prepare_dataset -> sparse_train -> qat -> export_model -> benchmark -> register_model
"""

from kfp import dsl

from components.benchmark.component import benchmark
from components.close_run.component import close_run
from components.export_model.component import export_model
from components.fetch_checkpoint.component import fetch_checkpoint
from components.open_run.component import open_run
from components.prepare_dataset.component import prepare_dataset
from components.qat.component import qat
from components.register_model.component import register_model
from components.sparse_train.component import sparse_train
from pipelines.k8s import configure

NAME = "sparse_transfer"


def build(k8s=None):
    """The pipeline function; ``k8s`` (K8sSettings) adds Kubernetes settings for compile/submit."""

    @dsl.pipeline(name="sparse-transfer", description="Sparse transfer learning: a sparse (zoo) checkpoint fine-"
                  "tuned on your data with its recipe (masks held), QAT, ONNX export, benchmark, MLflow registry.")
    def sparse_transfer(
        model: str,
        data: str,
        recipe: str,
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
        with dsl.ExitHandler(closer, name="sparse-transfer-steps"):
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
            train = configure(sparse_train(
                checkpoint=fetch.outputs["checkpoint"], dataset=data_task.outputs["dataset"], recipe=recipe,
                recipe_args=recipe_args, epochs=epochs, imgsz=imgsz, batch=batch, workers=workers, seed=seed,
                zoo=zoo, device=device, **cached), "sparse_train", k8s)
            quant = configure(qat(model=train.outputs["model"], dataset=data_task.outputs["dataset"], epochs=epochs,
                                  imgsz=imgsz, batch=batch, workers=workers, seed=seed, device=device, **cached),
                              "qat", k8s)
            export = configure(export_model(model=quant.outputs["qat_model"], **cached), "export_model", k8s)
            bench = configure(benchmark(deployment=export.outputs["deployment"], iterations=bench_iterations,
                                        **cached), "benchmark", k8s)
            configure(register_model(deployment=export.outputs["deployment"], benchmark=bench.outputs["result"],
                                     name=register_name, alias=alias, **run), "register_model", k8s)

    return sparse_transfer
