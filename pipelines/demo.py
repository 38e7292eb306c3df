"""``make demo``: the whole product on this machine, from nothing, in a few minutes on 2 CPU cores.

1. generate a small detection data set (coloured shapes, Ultralytics layout);
2. train a dense YOLOv8n base and thin it with structured GMP (75% of channels removed, coupled channel groups),
   publishing both to a local zoo (``zoo:`` stubs) — this stands in for the SparseZoo checkpoints the SparseML
   docs start from (unstructured zeros buy nothing on stock runtimes; fewer channels do);
3. run the ``sparse_transfer`` KFP pipeline locally: fetch the pruned stub → prepare the data → sparse transfer
   with SparseML's YOLOv8 recipe, verbatim (seed 000), shortened by ``recipe_args`` → QAT → export → benchmark →
   register in MLflow (sqlite store);
4. print where to look.

The terminal shows one line per stage and per step with its time (a bar while a model trains); the full output
goes to a log file whose path is printed first. ``--verbose`` (``make demo VERBOSE=1``) prints everything instead.
Everything lands in ``$SPARSEPIPE_HOME`` (default ``.sparsepipe/``); finished stages are reused on a re-run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from pipelines.console import Console

HOME = Path(os.environ.get("SPARSEPIPE_HOME", ".sparsepipe")).resolve()
IMGSZ = 128
BASE_STUB = "zoo:cv/detection/yolov8-n/pytorch/ultralytics/synth/base-none"
PRUNED_STUB = "zoo:cv/detection/yolov8-n/pytorch/ultralytics/synth/channels75-none"
THIN_ARGS = {"final_sparsity": 0.75}
TRANSFER_ARGS = {"num_epochs": 6, "qat_start_epoch": 4, "observer_freeze_epoch": 5, "bn_freeze_epoch": 5}
FAST_TRAIN = {"mosaic": 0.0, "optimizer": "AdamW", "lr0": 0.003, "warmup_epochs": 1}
RAW = HOME / "data" / "shapes"
RUNS = HOME / "runs"
ZOO = str(HOME / "zoo")
MLFLOW_URI = f"sqlite:///{HOME / 'mlflow.db'}"


class Stages:
    """Numbered stage headers and their 'done in' lines on the console."""

    def __init__(self, con: Console, total: int):
        self.con, self.total, self.n, self.t0 = con, total, 0, 0.0

    def start(self, text: str) -> None:
        self.n += 1
        self.con.line()
        self.con.line(f"==> [{self.n}/{self.total}] {text}")
        self.t0 = time.time()

    def done(self, text: str = "") -> None:
        self.con.line(f"    done in {time.time() - self.t0:.0f}s {text}".rstrip())


def make_data(st: Stages) -> None:
    from sparse_core.data.synth import synth_dataset

    st.start("generate a detection data set (160 train / 40 val images, 128 px)")
    if not (RAW / "data.yaml").exists():
        synth_dataset(RAW, task="detect", n_train=160, n_val=40, imgsz=IMGSZ, seed=0)
    st.done(str(RAW))


def make_zoo(st: Stages) -> None:
    from sparse_core import recipes
    from sparse_core.integrations.ultralytics import train
    from sparse_core.zoo import list_stubs, publish

    st.start("train a dense YOLOv8n base, thin 75% of its channels (structured GMP); publish both to the zoo")
    have = set(list_stubs(ZOO))
    common = {"data": str(RAW / "data.yaml"), "imgsz": IMGSZ, "batch": 16, "workers": 2, "project": RUNS,
              "plots": False, "extra_args": FAST_TRAIN}
    if BASE_STUB.removeprefix("zoo:") not in have and BASE_STUB not in have:
        st.con.begin("train the dense base")
        dense = train(model="yolov8n.yaml", epochs=20, name="base", **common)
        st.con.end(f"dense base: mAP50 {dense['map50']:.3f}")
        publish(RUNS / "base", BASE_STUB, zoo=ZOO)
    if PRUNED_STUB.removeprefix("zoo:") not in have and PRUNED_STUB not in have:
        st.con.begin("thin 75% of channels")
        pruned = train(model=str(RUNS / "base" / "weights" / "best.pt"), name="thinned75",
                       recipe=str(recipes.path("structured_prune.yaml")), recipe_args=THIN_ARGS, **common)
        st.con.end(f"thinned base: mAP50 {pruned['map50']:.3f}")
        publish(RUNS / "thinned75", PRUNED_STUB, zoo=ZOO)
    st.done(f"zoo at {ZOO}")


def run_pipeline(st: Stages) -> dict:
    from pipelines.local import run_local
    from sparse_core import recipes

    st.start("run the sparse_transfer pipeline locally (kfp.local)")
    params = {
        "model": PRUNED_STUB,
        "zoo": ZOO,
        "data": str(RAW),
        "data_format": "yolo",
        "recipe": str(recipes.path("yolov8_sparse_transfer_quant.yaml")),
        "recipe_args": json.dumps(TRANSFER_ARGS),
        "imgsz": IMGSZ,
        "batch": 16,
        "mlflow_uri": MLFLOW_URI,
        "experiment": "sparsepipe-demo",
        "register_name": "yolov8n-shapes",
    }
    try:
        result = run_local("sparse_transfer", params, pipeline_root=HOME / "kfp-local")
    finally:
        st.con.sync()  # the last step's "finished" line
        st.con.end()  # a failing step's line
    st.done(f"status {result['status']}")
    return result


def compare(st: Stages) -> dict:
    from mlflow import MlflowClient

    from sparse_core.bench import benchmark
    from sparse_core.export import export_model
    from sparse_core.tracking.registry import pull_model

    st.start("compare the registered model with the dense base (onnxruntime, same process)")
    dense_map50 = json.loads((RUNS / "base" / "summary.json").read_text())["map50"]
    dense_dir = HOME / "deploy" / "dense"
    if not (dense_dir / "model.onnx").exists():
        export_model(RUNS / "base" / "weights" / "best.pt", dense_dir, imgsz=IMGSZ)
    pulled = pull_model("yolov8n-shapes@candidate", HOME / "deploy" / "registered", tracking_uri=MLFLOW_URI)
    cmp = benchmark(pulled, compare=dense_dir, seconds=10)
    client = MlflowClient(MLFLOW_URI)
    version = client.get_model_version_by_alias("yolov8n-shapes", "candidate")
    map50 = client.get_run(version.run_id).data.metrics.get("map50", float("nan"))
    st.done()
    return {"cmp": cmp, "version": version.version, "map50": map50, "dense_map50": dense_map50,
            "dense_dir": dense_dir}


def report(con: Console, result: dict, cmp: dict, t_start: float) -> None:
    con.line(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=2, default=str))
    if con.verbose:  # quiet mode already showed a line per step
        for step in result.get("steps", []):
            con.line(f"    step {step.get('step', '?'):<18} {step.get('status', '')}")
    c = cmp["cmp"]
    con.line(f"""
    registered model (version {cmp['version']}) vs dense base: mAP50 {cmp['map50']:.3f} vs {cmp['dense_map50']:.3f},
    {c['speedup']:.2f}x images/s, {c['size_ratio_gzip']:.1f}x smaller (gzip),
    {c['images_per_s']:.1f} vs {c['compare']['images_per_s']:.1f} img/s (onnxruntime, {c['threads']} threads)""")
    con.line(f"""
    MLflow UI:         .venv/bin/mlflow ui --backend-store-uri {MLFLOW_URI} --port 5000
                       (experiment 'sparsepipe-demo': a parent run with one child run per step)
    Registered model:  .venv/bin/sparsepipe models pull yolov8n-shapes@candidate --out model/ --tracking-uri {MLFLOW_URI}
    Benchmark again:   .venv/bin/sparsepipe benchmark {HOME / 'deploy' / 'registered'} --compare {cmp['dense_dir']}
    Zoo:               .venv/bin/sparsepipe zoo list --zoo {ZOO}
    Total time: {time.time() - t_start:.0f}s""")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description="sparsepipe end to end, locally")
    parser.add_argument("--verbose", action="store_true", help="print every log line here instead of to the log file")
    args = parser.parse_args(argv)
    HOME.mkdir(parents=True, exist_ok=True)
    log = HOME / "logs" / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.log"
    t_start = time.time()
    if not args.verbose:
        print(f"sparsepipe demo: full log in {log} (make demo VERBOSE=1 prints it here)", flush=True)
    try:
        with Console(log, verbose=args.verbose) as con:
            st = Stages(con, 4)
            try:
                make_data(st)
                make_zoo(st)
                result = run_pipeline(st)
                cmp = compare(st)
            except BaseException:
                traceback.print_exc()  # into the log (quiet) or onto the terminal (verbose)
                raise
            report(con, result, cmp, t_start)
    except KeyboardInterrupt:
        print("sparsepipe demo: interrupted" + ("" if args.verbose else f" (full log: {log})"), file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line here, the traceback is in the log
        from sparse_core.errors import UserError

        cause = " ".join(str(err).split())[:300] or type(err).__name__
        print(f"sparsepipe demo: error: {cause}" + ("" if args.verbose else f" (full log: {log})"), file=sys.stderr)
        return 2 if isinstance(err, UserError) or getattr(err, "user", False) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
