"""The chain every pipeline shares: an MLflow parent run opened and always closed, the base model and data set
fetched, QAT run only where INT8 pays on the target engine (``quantize``), and a trained model exported, its
fastest form chosen on the target engine, benchmarked and registered.

A pipeline function keeps its own explicit parameter list (KFP reads it) and calls these builders for the common
tasks, so the three pipelines differ only in their training steps.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from kfp import dsl

from components.benchmark.component import benchmark
from components.choose_deployment.component import choose_deployment
from components.close_run.component import close_run
from components.decide_precision.component import decide_precision
from components.export_model.component import export_model
from components.fetch_checkpoint.component import fetch_checkpoint
from components.open_run.component import open_run
from components.prepare_dataset.component import prepare_dataset
from components.qat.component import qat
from components.register_model.component import register_model
from pipelines.k8s import configure


@dataclass
class Run:
    """Inside the exit handler: the open_run task and the tracking arguments every step gets."""

    k8s: object  # pipelines.k8s.K8sSettings | None
    opened: object  # the open_run task
    run: dict  # mlflow_uri, experiment, parent_run_id (open_run's output)
    cache_dir: str
    cached: dict = field(init=False)  # run + cache_dir: what the cached steps take

    def __post_init__(self):
        self.cached = {"cache_dir": self.cache_dir, **self.run}

    def step(self, task, name: str, display: str = ""):
        """``configure`` a task for step ``name`` (resources by step), optionally shown as ``display``."""
        task = configure(task, name, self.k8s)
        if display:
            task.set_display_name(display)
        return task


@contextmanager
def tracked(pipeline: str, display: str, k8s, *, mlflow_uri, experiment, parent_run_id, cache_dir, **logged):
    """Open the parent run inside an exit handler whose ``close_run`` ends it FINISHED/FAILED whatever happens.

    ``logged`` are pipeline parameters recorded on the parent run (open_run's inputs: model, data, recipe ...)."""
    track = {"mlflow_uri": mlflow_uri, "experiment": experiment}
    closer = configure(close_run(pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, parent_run_id=parent_run_id,
                                 **track), "close_run", k8s)
    with dsl.ExitHandler(closer, name=f"{display}-steps"):
        opened = configure(open_run(pipeline=pipeline, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                    parent_run_id=parent_run_id, **logged, **track), "open_run", k8s)
        yield Run(k8s=k8s, opened=opened, run={"parent_run_id": opened.output, **track}, cache_dir=cache_dir)


def fetch_inputs(r: Run, *, model, zoo, data, data_format, task, val_fraction, classes):
    """fetch_checkpoint and prepare_dataset (in parallel): the base model folder and the Ultralytics data set."""
    fetch = r.step(fetch_checkpoint(model=model, zoo=zoo, **r.cached), "fetch_checkpoint")
    data_task = r.step(prepare_dataset(data=data, data_format=data_format, task=task, val_fraction=val_fraction,
                                       classes=classes, **r.cached), "prepare_dataset")
    return fetch, data_task


def fit_args(data_task, *, imgsz, batch, workers, seed, device) -> dict:
    """The training inputs sparse_train and qat share: the prepared data set and the trainer settings."""
    return {"dataset": data_task.outputs["dataset"], "imgsz": imgsz, "batch": batch, "workers": workers,
            "seed": seed, "device": device}


def quantize(r: Run, train, fit: dict, *, engine, precision, imgsz, **qat_args):
    """decide_precision -> qat: the QAT stage runs only where the probe (or ``precision``) says INT8 pays on
    ``engine``; elsewhere qat passes the float model through. Returns the qat task."""
    decided = r.step(decide_precision(model=train.outputs["model"], engine=engine, precision=precision, imgsz=imgsz,
                                      **r.run), "decide_precision")
    return r.step(qat(model=decided.outputs["decided"], **qat_args, **fit), "qat")


def deploy(r: Run, model, *, bench_iterations, name, alias, tags: str = "", run: dict | None = None,
           prefix: str = "", engine: str = "", precision: str = "auto", float_model=None, choose_seconds=5.0):
    """export_model -> [choose_deployment] -> benchmark -> register_model for a trained model output; returns the
    register task. With ``engine``, the float model (``float_model``: the sparse_train output) and the export's
    forms are timed on it and the fastest within the accuracy gate is benchmarked and registered.

    ``run`` overrides the tracking arguments (the sweep's loop body); ``prefix`` names the tasks apart
    (``dense_`` -> dense_export, dense_benchmark, dense_register)."""
    run = r.run if run is None else run
    cached = {"cache_dir": r.cache_dir, **run}
    names = (f"{prefix}export", f"{prefix}benchmark", f"{prefix}register") if prefix else ("", "", "")
    export = r.step(export_model(model=model, **cached), "export_model", names[0])
    deployment, on = export.outputs["deployment"], {}
    if engine:
        chosen = r.step(choose_deployment(deployment=deployment, float_model=float_model, engine=engine,
                                          precision=precision, seconds=choose_seconds, **run), "choose_deployment")
        deployment, on = chosen.outputs["chosen"], {"engine": engine}
    bench = r.step(benchmark(deployment=deployment, iterations=bench_iterations, **on, **cached), "benchmark", names[1])
    extra = {"tags": tags} if tags else {}
    return r.step(register_model(deployment=deployment, benchmark=bench.outputs["result"],
                                 name=name, alias=alias, **extra, **run), "register_model", names[2])
