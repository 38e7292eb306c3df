"""Fault driver: kill a real local pipeline's step process at chosen points, rerun, compare with an unkilled run.

Real parts only: ``sparsepipe pipeline run sparse_transfer --local`` (kfp.local, one process per step) against a
real ``mlflow server`` on PostgreSQL with artifacts on SeaweedFS S3, real Ultralytics training (YOLOv8n from its
yaml, GMP pruning to 50% over 3 epochs, tiny data). A kill point is a progress event (``sparse_core.progress``):
with ``SPARSEPIPE_FAULT_HOLD=EVENT[:EPOCH]`` the step process pauses right after emitting it, the driver sends
SIGKILL or SIGTERM to that process (its pid is in the event), then reruns the pipeline with the same parameters.

Per kill point x signal it records: the rerun's status, epochs started in total minus epochs planned, whether the
final masks equal the unkilled run's, MLflow child runs per step, registered versions, and that no export folder
or zoo entry is readable half-written; for SIGTERM, the seconds from the signal to the process's exit and whether
the training checkpoint was kept. Writes ``benchmarks/results/faults.md`` (+ ``.json``).

    .venv/bin/python benchmarks/fault_driver.py [--points mid_epoch between_epochs ...] [--signals KILL TERM]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the real-server helpers the tests use

from sparse_core.preemption import FLUSH_SECONDS  # noqa: E402

EPOCHS = 3
RECIPE = f"""
version: 1.1.0
num_epochs: {EPOCHS}
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
pruning_modifiers:
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.05
    final_sparsity: 0.5
    start_epoch: 0.0
    end_epoch: 2.0
    update_frequency: 0.5
"""
# kill point -> (progress event[:epoch] the step pauses at, the step it is in)
POINTS = {
    "mid_epoch": ("epoch_start:2", "sparse_train"),  # epoch 2's first batch is running
    "between_epochs": ("epoch:1", "sparse_train"),  # epoch 1 saved and recorded, epoch 2 not started
    "during_export": ("export_start", "export_model"),
    "register_before_alias": ("registered", "register_model"),
    "zoo_upload": ("zoo_upload", "zoo publish"),
}
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] in "ZX"
    except OSError:
        return True


def _events(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class Bench:
    """The servers, data and parameters shared by every scenario."""

    def __init__(self, root: Path):
        from mlflow_server import start_mlflow
        from servers import start_seaweedfs
        from sparse_core.data.synth import synth_dataset

        self.root = root
        self.s3, self._stop_s3 = start_seaweedfs(root / "s3")
        self.uri, self._stop_mlflow = start_mlflow(root / "mlflow", backend="postgres", s3_endpoint=self.s3)
        self.data = synth_dataset(root / "data", n_train=8, n_val=4, imgsz=64, seed=3).parent
        (root / "gmp.yaml").write_text(RECIPE)

    def close(self) -> None:
        self._stop_mlflow()
        self._stop_s3()

    def env(self, home: Path, hold: str = "") -> dict:
        env = {**os.environ, "SPARSEPIPE_HOME": str(home), "SPARSEPIPE_PROGRESS": str(home / "progress.jsonl"),
               "YOLO_OFFLINE": "1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
               "AWS_ENDPOINT_URL": self.s3, "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": self.s3}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("SPARSEPIPE_STEP_CACHE", None)
        if hold:
            env["SPARSEPIPE_FAULT_HOLD"] = hold
        else:
            env.pop("SPARSEPIPE_FAULT_HOLD", None)
        return env

    def pipeline_cmd(self, home: Path, name: str) -> list[str]:
        params = {"model": "yolov8n.yaml", "data": str(self.data), "recipe": str(self.root / "gmp.yaml"),
                  "imgsz": 64, "batch": 8, "workers": 0, "bench_iterations": 5, "mlflow_uri": self.uri,
                  "experiment": name, "register_name": name, "cache_dir": str(home / "step-cache")}
        args = [a for k, v in params.items() for a in ("--param", f"{k}={v}")]
        return [sys.executable, "-m", "sparse_core.cli", "pipeline", "run", "sparse_transfer", "--local", "--json",
                "--pipeline-root", str(home / "kfp"), *args]


def _kill_at(proc: subprocess.Popen, progress: Path, event: str, sig: int, timeout: float = 900) -> dict:
    """Wait for ``event`` in the progress file, signal the process that emitted it, time its exit."""
    name, _, epoch = event.partition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in _events(progress):
            if e.get("event") == name and (not epoch or str(e.get("epoch")) == epoch):
                t0 = time.monotonic()
                os.kill(int(e["pid"]), sig)
                while not _exited(int(e["pid"])) and time.monotonic() - t0 < 120:
                    time.sleep(0.02)
                return {"pid": e["pid"], "exit_seconds": round(time.monotonic() - t0, 3)}
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before event {event!r}: {proc.stderr.read()[-1500:]}")
        time.sleep(0.05)
    raise RuntimeError(f"event {event!r} did not come within {timeout:.0f} s")


def run_pipeline(bench: Bench, home: Path, name: str, hold: str = "", sig: int | None = None) -> dict:
    """One pipeline run; with ``hold``/``sig`` the step is killed at the hold point (the run then fails)."""
    proc = subprocess.Popen(bench.pipeline_cmd(home, name), env=bench.env(home, hold), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill = _kill_at(proc, home / "progress.jsonl", hold, sig) if hold else {}
    out, err = proc.communicate(timeout=1800)
    summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return {"rc": proc.returncode, "summary": summary, "stderr": err[-2000:], **kill}


def masks(model_pt: Path) -> dict:
    """Zero pattern of every prunable weight (what "same masks" means)."""
    from sparse_core.checkpoint import checkpoint_model, load_checkpoint

    model = checkpoint_model(load_checkpoint(model_pt))
    return {k: (v == 0) for k, v in model.state_dict().items() if k.endswith("weight") and v.dim() == 4}


def same_masks(a: Path, b: Path) -> bool:
    ma, mb = masks(a), masks(b)
    return ma.keys() == mb.keys() and all(bool((ma[k] == mb[k]).all()) for k in ma)


def outcome(bench: Bench, home: Path, name: str, summary: dict) -> dict:
    """Child runs per step, registered versions, epochs started, the final sparse_train model."""
    from mlflow import MlflowClient

    client = MlflowClient(bench.uri, registry_uri=bench.uri)
    parent = summary["parent_run_id"]
    exp = client.get_run(parent).info.experiment_id
    kids = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=200)
    per_step: dict[str, int] = {}
    loss_steps: list[int] = []  # the per-epoch metric of the training step: one point per epoch, at its epoch
    for r in kids:
        per_step[r.data.tags["sparsepipe.step"]] = per_step.get(r.data.tags["sparsepipe.step"], 0) + 1
        if r.data.tags["sparsepipe.step"] == "sparse_train":
            loss_steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "train/box_loss"))
    versions = client.search_model_versions(f"name='{name}'")
    started = [e for e in _events(home / "progress.jsonl") if e.get("event") == "epoch_start"]
    train_out = sorted(Path(summary["pipeline_root"]).glob("sparse-transfer-*/sparse-train/*/model.pt"),
                       key=lambda p: p.stat().st_mtime)
    parents = client.search_runs([exp], "tags.`sparsepipe.run_kind` = 'pipeline'", max_results=50)
    return {"child_runs_per_step": per_step, "versions": len(versions), "epochs_started": len(started),
            "epoch_metric_steps": loss_steps,
            "model": str(train_out[-1]) if train_out else "", "parent_runs": len(parents),
            "alias": _alias(client, name)}


def _alias(client, name: str) -> str:
    try:
        return str(client.get_model_version_by_alias(name, "candidate").version)
    except Exception:  # noqa: BLE001
        return ""


def half_written(home: Path) -> list[str]:
    """Export folders with files but no export.json, cache entries without result.json, temp folders left."""
    bad = []
    for d in (home / "kfp").glob("sparse-transfer-*/export-model/deployment"):
        if d.is_dir() and any(d.iterdir()) and not (d / "export.json").is_file():
            bad.append(str(d))
    for entry in (home / "step-cache").glob("*/*"):
        if entry.is_dir() and not entry.name.endswith(".work") and not (entry / "result.json").is_file():
            bad.append(str(entry))
    return bad


def scenario(bench: Bench, point: str, sig_name: str, reference: dict) -> dict:
    hold, step = POINTS[point]
    home = bench.root / f"{point}-{sig_name}"
    name = f"faults-{point}-{sig_name}".replace("_", "-").lower()
    if step == "zoo publish":
        return zoo_scenario(bench, home, sig_name)
    killed = run_pipeline(bench, home, name, hold=hold, sig=SIGNALS[sig_name])
    works = list((home / "step-cache").glob("sparse_train/*.work/train/weights/last.pt"))
    partial = half_written(home)
    rerun = run_pipeline(bench, home, name)
    row = {"point": point, "signal": sig_name, "killed_rc": killed["rc"], "exit_seconds": killed.get("exit_seconds"),
           "checkpoint_kept": bool(works), "rerun_status": rerun["summary"].get("status", f"rc {rerun['rc']}"),
           "half_written_after_kill": partial}
    if rerun["rc"] != 0:
        return {**row, "error": rerun["stderr"][-500:]}
    got = outcome(bench, home, name, rerun["summary"])
    row.update(got, extra_epochs=got["epochs_started"] - reference["epochs_started"],
               masks_equal=same_masks(Path(got["model"]), Path(reference["model"])),
               same_parent=killed["summary"].get("parent_run_id") == rerun["summary"].get("parent_run_id"))
    return row


def zoo_scenario(bench: Bench, home: Path, sig_name: str) -> dict:
    """``sparsepipe zoo publish`` to S3 killed between its files and its manifest: not listed, then rerun."""
    from sparse_core.zoo import list_stubs

    import boto3

    bucket = f"faults-{sig_name.lower()}"
    zoo, stub = f"s3://{bucket}/zoo", "zoo:cv/detection/yolov8-n/pytorch/ultralytics/synth/faults-none"
    src = Path(reference_model_dir(bench))
    env = bench.env(home, "zoo_upload")
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                                           "AWS_DEFAULT_REGION")})
    boto3.client("s3", endpoint_url=bench.s3, region_name="us-east-1").create_bucket(Bucket=bucket)
    cmd = [sys.executable, "-m", "sparse_core.cli", "zoo", "publish", str(src), stub, "--zoo", zoo, "--json"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill = _kill_at(proc, home / "progress.jsonl", "zoo_upload", SIGNALS[sig_name])
    proc.communicate(timeout=120)
    visible = stub.removeprefix("zoo:") in [s.removeprefix("zoo:") for s in list_stubs(zoo)]
    again = subprocess.run(cmd, env=bench.env(home), cwd=REPO, capture_output=True, text=True, timeout=300)
    twice = subprocess.run(cmd, env=bench.env(home), cwd=REPO, capture_output=True, text=True, timeout=300)
    listed = [s for s in list_stubs(zoo) if s.removeprefix("zoo:") == stub.removeprefix("zoo:")]
    return {"point": "zoo_upload", "signal": sig_name, "killed_rc": proc.returncode,
            "exit_seconds": kill["exit_seconds"], "entry_visible_after_kill": visible,
            "rerun_status": "SUCCEEDED" if again.returncode == 0 else f"rc {again.returncode}",
            "retry_idempotent": twice.returncode == 0, "entries": len(listed)}


_REFERENCE_DIR: list[str] = []


def reference_model_dir(bench: Bench) -> str:
    return _REFERENCE_DIR[0]


def reference_run(bench: Bench) -> dict:
    home = bench.root / "reference"
    run = run_pipeline(bench, home, "faults-reference")
    if run["rc"] != 0:
        raise RuntimeError(f"the unkilled reference run failed: {run['stderr']}")
    got = outcome(bench, home, "faults-reference", run["summary"])
    _REFERENCE_DIR.append(str(Path(got["model"]).parent))
    return got


def write_table(rows: list[dict], reference: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.with_suffix(".json")).write_text(json.dumps({"reference": reference, "rows": rows}, indent=2, default=str))
    lines = ["# Fault table: a killed step resumes on rerun (`benchmarks/fault_driver.py`)", "",
             f"Pipeline `sparse_transfer --local`, YOLOv8n from yaml, GMP to 50% over {EPOCHS} epochs, 64 px, "
             "real mlflow server on PostgreSQL + SeaweedFS S3. The unkilled run started "
             f"{reference['epochs_started']} epochs. The recipe has no QuantizationModifier, so `qat` passes its input "
             "through: its resume path is the same code as `sparse_train`'s (`_train_stage`) but is not killed here.",
             "",
             "| kill point | signal | rerun | extra epochs | masks = unkilled | child runs/step | versions | "
             "half-written readable | exit after signal (s) | checkpoint kept |",
             "|---|---|---|---:|---|---|---:|---|---:|---|"]
    for r in rows:
        runs = r.get("child_runs_per_step")
        per = ("max " + str(max(runs.values()))) if runs else "-"
        readable = r.get("entry_visible_after_kill", bool(r.get("half_written_after_kill")))
        kept = r.get("checkpoint_kept", "-") if POINTS[r["point"]][1] == "sparse_train" else "-"
        lines.append(f"| {r['point']} | {r['signal']} | {r['rerun_status']} | {r.get('extra_epochs', '-')} | "
                     f"{r.get('masks_equal', '-')} | {per} | {r.get('versions', r.get('entries', '-'))} | "
                     f"{'yes' if readable else 'no'} | {r.get('exit_seconds', '-')} | {kept} |")
    lines += ["", "extra epochs: epochs started over both runs minus the unkilled run's (a stop costs the epoch in "
              "progress). child runs/step: the most MLflow child runs any step has under the one parent run. "
              "versions: registered versions of the run's model (zoo rows: entries listed). exit after signal: "
              "seconds from the signal to the step process's exit; SIGTERM's bound is one training batch + "
              f"{FLUSH_SECONDS:g} s MLflow flush. checkpoint kept: the epoch's last.pt in the step's working folder "
              "after the kill. zoo rows: `sparsepipe zoo publish` to SeaweedFS S3 killed between its files and its "
              "manifest; the entry must not be listed until a rerun completes it, and a second rerun is a no-op."]
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="+", default=list(POINTS), choices=list(POINTS))
    parser.add_argument("--signals", nargs="+", default=list(SIGNALS), choices=list(SIGNALS))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "faults.md"))
    parser.add_argument("--workdir", default=None, help="keep the runs here (default: a temp folder, removed)")
    args = parser.parse_args(argv)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="sparsepipe-faults-")).resolve()
    bench = Bench(root)
    try:
        reference = reference_run(bench)
        rows = []
        for point in args.points:
            for sig in args.signals:
                rows.append(scenario(bench, point, sig, reference))
                print(json.dumps(rows[-1], default=str), flush=True)
                write_table(rows, reference, Path(args.out))
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
