"""Record ``export`` and ``benchmark`` results in the MLflow run that trained the model.

The run id travels with the model: checkpoint (``sparsepipe.mlflow_run_id``) → ``export.json`` → benchmark.
A model with no run (e.g. an Ultralytics checkpoint) gets a new run of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

from sparse_core.tracking import Tracker
from sparse_core.tracking.connection import resolve_uri
from sparse_core.tracking.keys import TAG_ONNX_SHA256


def _export_info(model: str | Path) -> dict:
    path = Path(model)
    folder = path if path.is_dir() else path.parent
    info = folder / "export.json"
    return json.loads(info.read_text()) if info.is_file() else {}


def bench_metrics(result: dict) -> dict:
    """Benchmark result -> the standard metric keys the MLflow compare page lines up, plus
    ``images_per_s_<engine>`` so runs measured on different engines never share one row."""
    lat = result.get("latency_ms", {})
    out = {"images_per_s": result.get("images_per_s", 0.0), "latency_p50_ms": lat.get("p50", 0.0),
           "latency_p90_ms": lat.get("p90", 0.0), "size_mb": result.get("size_mb", 0.0),
           "size_gzip_mb": result.get("size_gzip_mb", 0.0)}
    if result.get("integer_conv_mac_share") is not None:
        out["integer_conv_mac_share"] = result["integer_conv_mac_share"]
    if result.get("speedup") is not None:
        out["speedup_vs_baseline"] = result["speedup"]
    if result.get("engine"):
        out[f"images_per_s_{result['engine']}"] = out["images_per_s"]
    return out


def bench_params(result: dict) -> dict:
    """What a benchmark figure means: engine, its version and the precision it really computed in."""
    return {"bench.engine": result.get("engine"), "bench.engine_version": result.get("engine_version"),
            "bench.precision": result.get("precision"), "bench.threads": result.get("threads"),
            "bench.batch": result.get("batch"), "bench.cpu": result.get("cpu", {}).get("model"),
            "bench.isa": result.get("cpu", {}).get("isa"), **({"bench.isa_cap": result["isa_cap"]}
                                                              if result.get("isa_cap") else {})}


def engine_accuracy(deploy_dir: str | Path) -> dict:
    """``map50_95_<engine>`` from a deployment folder's ``export.json`` (``accuracy.map50_95``: the exported model
    scored on each engine, when export was given the data set); empty when it was not scored."""
    acc = (_export_info(deploy_dir).get("accuracy") or {}).get("map50_95") or {}
    return {f"map50_95_{engine}": v for engine, v in acc.items() if isinstance(v, (int, float))}


def record_export(deploy_dir: str | Path, info: dict, uri: str | None, register: str | None = None,
                  alias: str | None = None, experiment: str = "sparsepipe") -> dict:
    """Log the deployment folder + sizes into the training run; optionally register it. Returns ids."""
    uri = resolve_uri(uri)
    if not uri:
        return {}
    run_id = info.get("mlflow_run_id")
    tracker = Tracker.start(uri, experiment=experiment, run_id=run_id, run_name=None if run_id else "export")
    tracker.log_metrics({"size_mb": info["size_bytes"] / 1e6, "size_gzip_mb": info["size_gzip_bytes"] / 1e6,
                         "export_sparsity": info.get("sparsity", 0.0)})
    tracker.set_tags({TAG_ONNX_SHA256: info.get("sha256", ""), "quantized": str(info.get("quantized"))})
    acc = info.get("accuracy") or {}
    if "map50_95" in acc:  # exported INT8 scored on both engines against the fake-quant model
        tracker.log_metrics({f"export_map50_95_{k}": v for k, v in acc["map50_95"].items()})
        tracker.set_tags({"export_accuracy_drop_flagged": str(acc["flagged"])})
    tracker.log_artifact(deploy_dir, "deployment")
    tracker.finish()
    out = {"mlflow_run_id": tracker.run_id}
    if register:
        from sparse_core.tracking.registry import register_model

        out["registered"] = register_model(deploy_dir, register, run_id=tracker.run_id, alias=alias, tracking_uri=uri)
    return out


def record_benchmark(model: str | Path, result: dict, uri: str | None, experiment: str = "sparsepipe") -> str | None:
    """Log benchmark metrics on the run that produced ``model`` (from its export.json); returns the run id."""
    uri = resolve_uri(uri)
    if not uri:
        return None
    run_id = _export_info(model).get("mlflow_run_id")
    tracker = Tracker.start(uri, experiment=experiment, run_id=run_id, run_name=None if run_id else "benchmark")
    tracker.log_metrics(bench_metrics(result))
    tracker.log_params(bench_params(result))
    tracker.finish()
    return tracker.run_id
