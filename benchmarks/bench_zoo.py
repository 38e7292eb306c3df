"""The benchmark zoo (``benchmarks/zoo``, committed): every model the frontier trains, keyed by what made it.

A model's key is the sha256 of its inputs: the start (a model yaml's text, or the sha256 of the checkpoint it
continues), the teacher's sha256, the recipe's text, the recipe arguments, the data set's content hash and the
training arguments. Its stub ``zoo:cv/detection/<arch>/pytorch/sparsepipe-bench/<data>/<name>-<key[:16]>`` is
published to the project's own folder zoo (sha256 manifest, checkpoint xz-compressed, ``provenance.json`` with the
inputs and the per-epoch curve), so a later session finds what an earlier one trained, trains only what is
missing, and a changed input (another recipe, more epochs, other data) is a new model, never a stale one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "benchmarks" / "zoo"
REPO = "sparsepipe-bench"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def key_of(spec: dict) -> str:
    """The model's identity: sha256 of its canonical inputs (``spec`` holds only hashes, names and numbers)."""
    return text_sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")))


def stub(base: str, dataset: str, name: str, key: str) -> str:
    arch = base.replace("yolov8", "yolov8-", 1) if base[len("yolov8"):].isalpha() else base
    return f"zoo:cv/detection/{arch}/pytorch/{REPO}/{dataset}/{name}-{key[:16]}"


def lookup(zoo: Path, model_stub: str) -> Path | None:
    """The verified, fetched entry folder (``model.pt``, ``provenance.json``) of ``model_stub``, or None."""
    from sparse_core.zoo import fetch

    if not (zoo / model_stub.removeprefix("zoo:") / "manifest.json").is_file():
        return None
    return fetch(model_stub, zoo=str(zoo))


def curve(results_csv: Path) -> list[dict]:
    """Ultralytics' per-epoch validation curve: [{epoch, map50, map50_95}]."""
    if not results_csv.is_file():
        return []
    rows = []
    with open(results_csv, newline="") as f:
        for row in csv.DictReader(f):
            row = {k.strip(): v for k, v in row.items()}
            rows.append({"epoch": int(float(row["epoch"])), "map50": round(float(row["metrics/mAP50(B)"]), 5),
                         "map50_95": round(float(row["metrics/mAP50-95(B)"]), 5)})
    return rows


def convergence(points: list[dict], share: float = 0.25, min_gain: float = 0.5) -> dict:
    """The stopping rule for a dense reference: it has converged when the best mAP50-95 of the last ``share`` of
    its epochs is less than ``min_gain`` points above the best before them."""
    if len(points) < 4:
        return {"converged": False, "gain_points": None, "epochs": len(points), "rule": "too few epochs to tell"}
    cut = len(points) - max(1, round(share * len(points)))
    before = max(p["map50_95"] for p in points[:cut])
    last = max(p["map50_95"] for p in points[cut:])
    gain = round(100 * (last - before), 2)
    return {"converged": gain < min_gain, "gain_points": gain, "epochs": len(points),
            "rule": f"best mAP50-95 of the last {round(100 * share)}% of epochs < {min_gain:g} point above the best "
                    "before them"}


def publish_run(run_dir: Path, model_stub: str, zoo: Path, provenance: dict) -> Path:
    """Publish a finished training run (its ``last.pt``, the schedule's end) under ``model_stub``; returns the entry
    as fetched back, so every consumer reads the same verified bytes."""
    from sparse_core.zoo import publish

    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        staging = Path(tmp)
        shutil.copyfile(run_dir / "weights" / "last.pt", staging / "model.pt")
        for name in ("summary.json", "args.yaml"):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, staging / name)
        for recipe in run_dir.glob("recipe*.yaml"):
            shutil.copyfile(recipe, staging / recipe.name)
        points = curve(run_dir / "results.csv")
        prov = {**provenance, "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "curve": points}
        (staging / "provenance.json").write_text(json.dumps(prov, indent=1, default=str) + "\n")
        publish(staging, model_stub, zoo=str(zoo), compress=True)
    return lookup(zoo, model_stub)


def checkpoint_sha256(entry: Path) -> str:
    """The sha256 of the entry's ``model.pt`` as its manifest lists it (fetch verified the file against it), so a
    dependent model's key needs no second pass over the checkpoint."""
    for f in json.loads((entry / "manifest.json").read_text())["files"]:
        if (f.get("unpacked") or f)["path"] == "model.pt":
            return (f.get("unpacked") or f)["sha256"]
    raise KeyError(f"{entry}: no model.pt in its manifest")


def provenance(entry: Path) -> dict:
    return json.loads((entry / "provenance.json").read_text())


def size_mb(zoo: Path) -> float:
    return round(sum(p.stat().st_size for p in zoo.rglob("*") if p.is_file()) / 1e6, 2) if zoo.is_dir() else 0.0
