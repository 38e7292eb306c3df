"""sparsify_from_scratch (seed 002's path): a dense model (yaml or checkpoint) pruned by a GMP recipe on your data,
optionally distilled from a teacher, then QAT -> export -> bench -> register.

DAG inside an exit handler (``close_run``): open_run -> fetch_checkpoint, fetch_teacher, prepare_dataset ->
sparse_train -> decide_precision -> qat -> export_model -> choose_deployment -> benchmark -> register_model. An
empty ``teacher`` fetches nothing and the training steps run without distillation.

``engine`` is the target engine and ``precision`` (auto|float|int8) which forms may ship: auto runs QAT only
where a post-training INT8 probe beats the float model on ``engine`` on this machine (decide_precision), and
registers the fastest form within the accuracy gate (choose_deployment, table in deployment.json).
"""

from kfp import dsl

from components.fetch_checkpoint.component import fetch_checkpoint
from components.sparse_train.component import sparse_train
from pipelines.chain import deploy, fetch_inputs, fit_args, quantize, tracked

NAME = "sparsify_from_scratch"


def build(k8s=None):
    """The pipeline function; ``k8s`` (K8sSettings) adds Kubernetes settings for compile/submit."""

    @dsl.pipeline(name="sparsify-from-scratch", description="Prune (and quantize) a dense YOLO model with a "
                  "recipe, optionally distilling from a teacher; ONNX export, benchmark, MLflow registry.")
    def sparsify_from_scratch(
        model: str,
        data: str,
        recipe: str,
        teacher: str = "",
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
        engine: str = "onnxruntime",
        precision: str = "auto",
        mlflow_uri: str = "",
        experiment: str = "sparsepipe",
        register_name: str = "sparsepipe-model",
        alias: str = "candidate",
        parent_run_id: str = "",
        cache_dir: str = "",
    ):
        with tracked(NAME, "sparsify-from-scratch", k8s, mlflow_uri=mlflow_uri, experiment=experiment,
                     parent_run_id=parent_run_id, cache_dir=cache_dir, model=model, data=data, recipe=recipe,
                     recipe_args=recipe_args, epochs=epochs, imgsz=imgsz, batch=batch,
                     register_name=register_name) as r:
            fetch, data_task = fetch_inputs(r, model=model, zoo=zoo, data=data, data_format=data_format, task=task,
                                            val_fraction=val_fraction, classes=classes)
            fetch_t = r.step(fetch_checkpoint(model=teacher, zoo=zoo, **r.cached), "fetch_checkpoint",
                             "fetch_teacher")
            fit = {**fit_args(data_task, imgsz=imgsz, batch=batch, workers=workers, seed=seed, device=device),
                   "teacher": fetch_t.outputs["checkpoint"], **r.cached}
            train = r.step(sparse_train(checkpoint=fetch.outputs["checkpoint"], recipe=recipe, recipe_args=recipe_args,
                                        epochs=epochs, zoo=zoo, **fit), "sparse_train")
            quant = quantize(r, train, fit, engine=engine, precision=precision, imgsz=imgsz, epochs=epochs)
            deploy(r, quant.outputs["qat_model"], bench_iterations=bench_iterations, name=register_name, alias=alias,
                   engine=engine, precision=precision, float_model=train.outputs["model"])

    return sparsify_from_scratch
