"""auto_sparsify: dense model -> sensitivity analysis -> recipe for a latency target -> structured training with
KD from the dense model -> QAT -> export -> bench -> register.

DAG inside an exit handler (``close_run``): open_run -> fetch_checkpoint, prepare_dataset -> analyze ->
generate_recipe -> sparse_train (teacher: the fetched dense model) -> decide_precision -> qat -> export_model ->
choose_deployment -> benchmark -> register_model. The budget loop: sparse_train backs off (sparsity x1.0 / x0.6 /
x0.3) until the model is within ``max_map_drop`` mAP50-95 points of the fetched dense model, and fails the run when
no attempt is (-1 turns it off). The registered version carries its lineage as tags: the generated recipe's analysis sha256, target and
prediction, and the budget it met (``sparsepipe.recipe_*``, ``sparsepipe.budget``).

``engine`` is the target engine and ``precision`` (auto|float|int8) which forms may ship: auto runs QAT only
where a post-training INT8 probe beats the float model on ``engine`` on this machine (decide_precision), and
registers the fastest form within the accuracy gate (choose_deployment, table in deployment.json).
"""

from kfp import dsl

from components.analyze.component import analyze
from components.generate_recipe.component import generate_recipe
from components.sparse_train.component import sparse_train
from pipelines.chain import deploy, fetch_inputs, fit_args, quantize, tracked

NAME = "auto_sparsify"


def build(k8s=None):
    """The pipeline function; ``k8s`` (K8sSettings) adds Kubernetes settings for compile/submit."""

    @dsl.pipeline(name="auto-sparsify", description="Sensitivity analysis, a per-layer structured recipe for a "
                  "latency target, KD training, QAT, ONNX export, benchmark, MLflow registry.")
    def auto_sparsify(
        model: str,
        data: str,
        target_speedup: float = 2.0,
        max_map_drop: float = 1.0,
        engine: str = "onnxruntime",
        levels: str = "0.25,0.5,0.75",
        val_images: int = 16,
        qat_stage: bool = True,
        epochs: int = 10,
        qat_epochs: int = 3,
        zoo: str = "",
        data_format: str = "yolo",
        task: str = "detect",
        val_fraction: float = 0.2,
        classes: str = "",
        imgsz: int = 640,
        deploy_imgsz: int = 640,
        batch: int = 16,
        workers: int = 2,
        seed: int = 0,
        device: str = "",
        bench_iterations: int = 50,
        precision: str = "auto",
        mlflow_uri: str = "",
        experiment: str = "sparsepipe",
        register_name: str = "sparsepipe-model",
        alias: str = "candidate",
        parent_run_id: str = "",
        cache_dir: str = "",
    ):
        with tracked(NAME, "auto-sparsify", k8s, mlflow_uri=mlflow_uri, experiment=experiment,
                     parent_run_id=parent_run_id, cache_dir=cache_dir, model=model, data=data, recipe="generated",
                     recipe_args="", epochs=epochs, imgsz=imgsz, batch=batch,
                     register_name=register_name) as r:
            fetch, data_task = fetch_inputs(r, model=model, zoo=zoo, data=data, data_format=data_format, task=task,
                                            val_fraction=val_fraction, classes=classes)
            an = r.step(analyze(checkpoint=fetch.outputs["checkpoint"], dataset=data_task.outputs["dataset"],
                                engine=engine, imgsz=deploy_imgsz, levels=levels, val_images=val_images, **r.run),
                        "analyze")
            gen = r.step(generate_recipe(analysis=an.outputs["analysis"], target_speedup=target_speedup,
                                         engine=engine, qat=qat_stage, epochs=epochs, qat_epochs=qat_epochs, **r.run),
                         "generate_recipe")
            fit = {**fit_args(data_task, imgsz=imgsz, batch=batch, workers=workers, seed=seed, device=device),
                   **r.cached}
            train = r.step(sparse_train(checkpoint=fetch.outputs["checkpoint"], recipe=gen.outputs["Output"],
                                        teacher=fetch.outputs["checkpoint"], max_map_drop=max_map_drop, **fit),
                           "sparse_train")
            quant = quantize(r, train, fit, engine=engine, precision=precision, imgsz=deploy_imgsz,
                             teacher=fetch.outputs["checkpoint"])
            deploy(r, quant.outputs["qat_model"], bench_iterations=bench_iterations, name=register_name, alias=alias,
                   engine=engine, precision=precision, float_model=train.outputs["model"])

    return auto_sparsify
