"""Headline metrics on a pipeline's parent run, so selecting two pipeline runs in the MLflow UI compares them.

Every step logs into its own child run; the parent held only the pipeline's parameters, so the compare view of two
pipeline runs showed no metric and no model. ``roll_up`` (called when the parent is closed) copies onto the parent
the numbers of the model the pipeline delivered: the ``champion`` when ``select_champion`` ran, else the model
registered last (not the dense baseline). Its ``register_model`` child run holds them (training mAP, sparsity,
benchmark images/s and gzip size, per engine as ``images_per_s_<engine>``/``map50_95_<engine>``). Against the dense
model (the child tagged ``baseline=dense`` in this run, else the newest registered version of the same name so
tagged) and the OpenVINO INT8 baseline (a version tagged ``baseline=openvino-int8``) it adds ``speedup_vs_dense``,
``speedup_vs_baseline`` (per engine too) and ``map50_95_drop_vs_dense`` (mAP50-95 points). Tags name the registered
version and its ``models:/`` URI; the run description links to the version's page.
"""

from __future__ import annotations

import logging
import re
import time

from sparse_core.tracking import keys

log = logging.getLogger("sparsepipe.tracking")
HEADLINE = ("map50", "map50_95", "mask_map50_95", "sparsity", "size_mb", "size_gzip_mb", "images_per_s",
            "latency_p50_ms")
_PER_ENGINE = re.compile(r"^(images_per_s|map50_95|map50)_([a-z][a-z0-9_]*)$")


def ui_url(uri: str, experiment_id: str, run_id: str = "") -> str:
    """The MLflow UI page of a run (or of the experiment's runs table), opened in the UI's model-training mode.

    MLflow 3.17's UI starts in its GenAI mode whatever the experiment's ``mlflow.experimentKind`` says (the mode is
    a browser setting, default GenAI); ``workflowType=machine_learning`` in the link is what opens the runs."""
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/{page}?workflowType=machine_learning"


def _children(client, parent) -> list:
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=500)


def _registered(run) -> str:
    return run.data.tags.get(keys.TAG_REGISTERED, "")


def delivered(children: list):
    """The register_model child run of the model the pipeline delivered (None when nothing was registered)."""
    regs = sorted((r for r in children if _registered(r) and r.info.status == "FINISHED"),
                  key=lambda r: r.info.start_time or 0)
    champion = next((r.data.tags["sparsepipe.champion"] for r in children if r.data.tags.get("sparsepipe.champion")),
                    None)
    if champion:
        picked = [r for r in regs if _registered(r) == champion]
        if picked:
            return picked[-1]
    sparse = [r for r in regs if r.data.tags.get(keys.TAG_BASELINE) != "dense"]
    return (sparse or regs or [None])[-1]


def _reference(client, children: list, name: str, kind: str) -> dict:
    """Metrics of the reference model ``kind`` (a TAG_BASELINE value): this run's child, else the registry's."""
    here = [r for r in children if r.data.tags.get(keys.TAG_BASELINE) == kind and _registered(r)]
    if here:
        return dict(here[-1].data.metrics)
    try:
        versions = client.search_model_versions(f"name='{name}'") if name else []
    except Exception:  # noqa: BLE001 - a missing model means "not known", not an error
        return {}
    tagged = sorted((v for v in versions if (v.tags or {}).get(keys.TAG_BASELINE) == kind), key=lambda v: int(v.version))
    for mv in reversed(tagged):
        try:
            return dict(client.get_run(mv.run_id).data.metrics)
        except Exception:  # noqa: BLE001 - the version's run was deleted: try an older one
            continue
    return {}


def _ratios(model: dict, ref: dict, suffix: str) -> dict:
    """``speedup_vs_<suffix>`` overall and per engine: the model's images/s over the reference's, where both exist."""
    out = {}
    for key, value in model.items():
        m = _PER_ENGINE.match(key)
        if (key == "images_per_s" or (m and m[1] == "images_per_s")) and ref.get(key, 0) > 0:
            out[f"speedup_vs_{suffix}" + key[len("images_per_s"):]] = value / ref[key]
    return out


def headline(client, parent_run_id: str) -> tuple[dict, dict]:
    """(metrics, tags) for the parent run ``parent_run_id``; both empty when no model was registered."""
    parent = client.get_run(parent_run_id)
    children = _children(client, parent)
    reg = delivered(children)
    if reg is None:
        return {}, {}
    model = {k: v for k, v in reg.data.metrics.items() if k in HEADLINE or _PER_ENGINE.match(k)}
    name, _, version = _registered(reg).rpartition("/")
    metrics = dict(model)
    dense = _reference(client, children, name, "dense")
    metrics.update(_ratios(model, dense, "dense"))
    if "map50_95" in model and "map50_95" in dense:
        metrics["map50_95_drop_vs_dense"] = round(100 * (dense["map50_95"] - model["map50_95"]), 4)
    metrics.update(_ratios(model, _reference(client, children, name, keys.BASELINE_INT8), "baseline"))
    uri = f"models:/{name}/{version}"
    tags = {keys.TAG_REGISTERED: f"{name}/{version}", keys.TAG_MODEL_URI: uri,
            "mlflow.note.content": f"Registered model: [{name} version {version}](#/models/{name}/versions/{version})"
                                   f" (`{uri}`), from step run {reg.info.run_name} ({reg.info.run_id}). "
                                   f"[All runs of this experiment](#/experiments/{parent.info.experiment_id}/runs"
                                   "?workflowType=machine_learning)."}
    return metrics, tags


def roll_up(client, parent_run_id: str) -> dict:
    """Write ``headline`` onto the parent run; returns the metrics written. Never raises (the run still closes)."""
    from mlflow.entities import Metric, RunTag

    try:
        metrics, tags = headline(client, parent_run_id)
        now = int(time.time() * 1000)
        if metrics or tags:
            client.log_batch(parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                             tags=[RunTag(k, v) for k, v in tags.items()])
        return metrics
    except Exception as err:  # noqa: BLE001 - a summary must not turn a finished pipeline into a failed one
        log.warning("MLflow parent run %s: headline metrics not written: %s", parent_run_id, str(err)[:200])
        return {}
