"""``make demo``: the whole product on this machine, from nothing, in a few minutes on 2 CPU cores.

1. generate a small detection data set (coloured shapes, Ultralytics layout);
2. train a dense YOLOv8n base and thin it with structured GMP (75% of channels removed, coupled channel groups),
   publishing both to a local zoo (``zoo:`` stubs) — this stands in for the SparseZoo checkpoints the SparseML
   docs start from (unstructured zeros buy nothing on stock runtimes; fewer channels do);
3. run the ``sparse_transfer`` KFP pipeline locally: fetch the pruned stub → prepare the data → sparse transfer
   with SparseML's YOLOv8 recipe, verbatim (seed 000), shortened by ``recipe_args`` → QAT → export → benchmark →
   register in MLflow (sqlite store);
4. print where to look.

Everything lands in ``$SPARSEPIPE_HOME`` (default ``.sparsepipe/``); finished stages are reused on a re-run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HOME = Path(os.environ.get("SPARSEPIPE_HOME", ".sparsepipe")).resolve()
IMGSZ = 128
BASE_STUB = "zoo:cv/detection/yolov8-n/pytorch/ultralytics/synth/base-none"
PRUNED_STUB = "zoo:cv/detection/yolov8-n/pytorch/ultralytics/synth/channels75-none"
THIN_ARGS = {"final_sparsity": 0.75}
TRANSFER_ARGS = {"num_epochs": 6, "qat_start_epoch": 4, "observer_freeze_epoch": 5, "bn_freeze_epoch": 5}
FAST_TRAIN = {"mosaic": 0.0, "optimizer": "AdamW", "lr0": 0.003, "warmup_epochs": 1}


def stage(n: int, total: int, text: str) -> float:
    print(f"\n==> [{n}/{total}] {text}", flush=True)
    return time.time()


def done(t0: float, text: str = "") -> None:
    print(f"    done in {time.time() - t0:.0f}s {text}", flush=True)


def main() -> int:
    from sparse_core import recipes
    from sparse_core.data.synth import synth_dataset
    from sparse_core.integrations.ultralytics import train
    from sparse_core.zoo import list_stubs, publish

    HOME.mkdir(parents=True, exist_ok=True)
    zoo = str(HOME / "zoo")
    mlflow_uri = f"sqlite:///{HOME / 'mlflow.db'}"
    t_start = time.time()

    t0 = stage(1, 4, "generate a detection data set (160 train / 40 val images, 128 px)")
    raw = HOME / "data" / "shapes"
    if not (raw / "data.yaml").exists():
        synth_dataset(raw, task="detect", n_train=160, n_val=40, imgsz=IMGSZ, seed=0)
    done(t0, str(raw))

    t0 = stage(2, 4, "train a dense YOLOv8n base, thin 75% of its channels (structured GMP); publish both to the zoo")
    have = set(list_stubs(zoo))
    runs = HOME / "runs"
    if BASE_STUB.removeprefix("zoo:") not in have and BASE_STUB not in have:
        dense = train(model="yolov8n.yaml", data=str(raw / "data.yaml"), epochs=20, imgsz=IMGSZ, batch=16,
                      workers=2, project=runs, name="base", plots=False, extra_args=FAST_TRAIN)
        print(f"    dense base: mAP50 {dense['map50']:.3f}")
        publish(runs / "base", BASE_STUB, zoo=zoo)
    if PRUNED_STUB.removeprefix("zoo:") not in have and PRUNED_STUB not in have:
        pruned = train(model=str(runs / "base" / "weights" / "best.pt"), data=str(raw / "data.yaml"),
                       recipe=str(recipes.path("structured_prune.yaml")), recipe_args=THIN_ARGS, imgsz=IMGSZ,
                       batch=16, workers=2, project=runs, name="thinned75", plots=False, extra_args=FAST_TRAIN)
        print(f"    thinned base: mAP50 {pruned['map50']:.3f}")
        publish(runs / "thinned75", PRUNED_STUB, zoo=zoo)
    done(t0, f"zoo at {zoo}")

    t0 = stage(3, 4, "run the sparse_transfer pipeline locally (kfp.local)")
    from pipelines.local import run_local

    params = {
        "model": PRUNED_STUB,
        "zoo": zoo,
        "data": str(raw),
        "data_format": "yolo",
        "recipe": str(recipes.path("yolov8_sparse_transfer_quant.yaml")),
        "recipe_args": json.dumps(TRANSFER_ARGS),
        "imgsz": IMGSZ,
        "batch": 16,
        "mlflow_uri": mlflow_uri,
        "experiment": "sparsepipe-demo",
        "register_name": "yolov8n-shapes",
    }
    result = run_local("sparse_transfer", params, pipeline_root=HOME / "kfp-local")
    done(t0, f"status {result['status']}")

    t0 = stage(4, 4, "compare the registered model with the dense base (onnxruntime, same process)")
    from sparse_core.bench import benchmark
    from sparse_core.export import export_model
    from sparse_core.tracking.registry import pull_model

    dense_map50 = json.loads((runs / "base" / "summary.json").read_text())["map50"]
    dense_dir = HOME / "deploy" / "dense"
    if not (dense_dir / "model.onnx").exists():
        export_model(runs / "base" / "weights" / "best.pt", dense_dir, imgsz=IMGSZ)
    pulled = pull_model("yolov8n-shapes@candidate", HOME / "deploy" / "registered", tracking_uri=mlflow_uri)
    cmp = benchmark(pulled, compare=dense_dir, seconds=10)
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    version = client.get_model_version_by_alias("yolov8n-shapes", "candidate")
    map50 = client.get_run(version.run_id).data.metrics.get("map50", float("nan"))
    done(t0)
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=2, default=str))
    for step in result.get("steps", []):
        print(f"    step {step.get('step', '?'):<18} {step.get('status', '')}")
    print(f"""
    registered model (version {version.version}) vs dense base: mAP50 {map50:.3f} vs {dense_map50:.3f},
    {cmp['speedup']:.2f}x images/s, {cmp['size_ratio_gzip']:.1f}x smaller (gzip),
    {cmp['images_per_s']:.1f} vs {cmp['compare']['images_per_s']:.1f} img/s (onnxruntime, {cmp['threads']} threads)""")
    print(f"""
    MLflow UI:         .venv/bin/mlflow ui --backend-store-uri {mlflow_uri} --port 5000
                       (experiment 'sparsepipe-demo': a parent run with one child run per step)
    Registered model:  .venv/bin/sparsepipe models pull yolov8n-shapes@candidate --out model/ --tracking-uri {mlflow_uri}
    Benchmark again:   .venv/bin/sparsepipe benchmark {HOME / 'deploy' / 'registered'} --compare {dense_dir}
    Zoo:               .venv/bin/sparsepipe zoo list --zoo {zoo}
    Total time: {time.time() - t_start:.0f}s""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
