"""Model zoo on a real SeaweedFS S3 server (and a local folder): publish, list, fetch on a clean cache, verify,
resolve ``--model``/``--recipe`` stubs, refuse a tampered object, suggest the nearest stubs, concurrent fetches."""

from __future__ import annotations

import hashlib
import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import torch

from sparse_core.checkpoint import load_checkpoint
from sparse_core.errors import UserError
from sparse_core.zoo import fetch, list_stubs, publish, resolve_model, resolve_recipe

STUB = "zoo:cv/detection/yolov8-n/pytorch/ultralytics/synth/pruned50-none"
OTHER = "zoo:cv/detection/yolov8-n/pytorch/ultralytics/coco/base-none"
RECIPE = "version: 1.1.0\nmodifiers:\n  - !ConstantPruningModifier\n    start_epoch: 0.0\n    params: __ALL_PRUNABLE__\n"
TRANSFER = "# Transfer\n```yaml\nmodifiers:\n  - !ConstantPruningModifier\n    params: ['re:.*']\n```\n"


def zoo_cli(*args, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if cache is not None:
        env["SPARSEPIPE_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", "sparse_core.cli", "zoo", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=env)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as 'sparsepipe train' leaves it: an Ultralytics checkpoint, recipes, summary, args."""
    from ultralytics.nn.tasks import DetectionModel

    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    (run / "weights").mkdir()
    torch.save({"model": model, "train_args": {"model": "yolov8n.yaml", "imgsz": 64, "task": "detect"},
                "epoch": -1}, run / "weights" / "best.pt")
    (run / "recipe.yaml").write_text(RECIPE)
    (run / "recipe_transfer_learn.md").write_text(TRANSFER)
    (run / "summary.json").write_text(json.dumps({"map50": 0.5, "sparsity": 0.5}))
    (run / "args.yaml").write_text("model: yolov8n.yaml\nimgsz: 64\n")
    (run / "results.csv").write_text("epoch,loss\n")  # not part of an entry
    return run


def test_s3_round_trip_tamper_and_missing_stub(s3_bucket, run_dir, tmp_path, monkeypatch):
    zoo = f"s3://{s3_bucket}/zoo"
    pub = zoo_cli("publish", run_dir, STUB, "--zoo", zoo, "--json")
    assert pub.returncode == 0, pub.stderr
    manifest = json.loads(pub.stdout.strip().splitlines()[-1])
    files = {f["path"]: f for f in manifest["files"]}
    assert set(files) == {"model.pt", "recipe.yaml", "recipe_transfer_learn.md", "summary.json", "args.yaml"}
    assert files["model.pt"]["sha256"] == sha(run_dir / "weights" / "best.pt")
    assert files["model.pt"]["size"] == (run_dir / "weights" / "best.pt").stat().st_size
    assert manifest["recipes"] == {"original": "recipe.yaml", "transfer_learn": "recipe_transfer_learn.md"}
    assert manifest["architecture"] == "yolov8-n" and manifest["dataset"] == "synth"
    again = zoo_cli("publish", run_dir, STUB, "--zoo", zoo, "--json")  # a retried publish: the same entry back
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1]) == manifest
    changed = tmp_path / "changed"
    shutil.copytree(run_dir, changed)
    (changed / "summary.json").write_text(json.dumps({"map50": 0.1}))
    other = zoo_cli("publish", changed, STUB, "--zoo", zoo)
    assert other.returncode == 2 and "already published" in other.stderr
    assert zoo_cli("publish", run_dir, OTHER, "--zoo", zoo).returncode == 0

    listed = zoo_cli("list", "--zoo", zoo, "--json")
    assert json.loads(listed.stdout.strip().splitlines()[-1]) == {"zoo": zoo, "stubs": sorted([STUB, OTHER])}

    # fetch on a clean cache: every file verified and identical to what was published
    cache = tmp_path / "cache"
    out = tmp_path / "fetched"
    got = zoo_cli("fetch", STUB, "--out", out, "--zoo", zoo, cache=cache)
    assert got.returncode == 0, got.stderr
    assert sha(out / "model.pt") == sha(run_dir / "weights" / "best.pt")
    assert (out / "recipe_transfer_learn.md").read_text() == TRANSFER
    assert json.loads((out / "manifest.json").read_text())["stub"] == STUB
    assert len(list((cache / "zoo" / "blobs").iterdir())) == 5

    # --model / --recipe resolution in-process (train uses these), plus the short-name form
    monkeypatch.setenv("SPARSEPIPE_CACHE", str(cache))
    ckpt_path = resolve_model(STUB, zoo=zoo)
    ckpt = load_checkpoint(ckpt_path)
    src_sd = torch.load(run_dir / "weights" / "best.pt", weights_only=False)["model"].state_dict()
    assert all(torch.equal(v, src_sd[k]) for k, v in ckpt["model"].state_dict().items())
    assert ckpt["train_args"]["imgsz"] == 64
    assert resolve_model("zoo:yolov8-n-synth-pruned50-none", zoo=zoo).read_bytes() == ckpt_path.read_bytes()
    assert resolve_recipe(STUB + "?recipe_type=transfer_learn", zoo=zoo).read_text() == TRANSFER
    assert resolve_recipe(STUB, zoo=zoo).read_text() == RECIPE
    with pytest.raises(UserError, match=r"no recipe of type 'nope'; expected one of \['original', 'transfer_learn'\]"):
        resolve_recipe(STUB + "?recipe_type=nope", zoo=zoo)
    assert resolve_model("weights/local.pt") == Path("weights/local.pt")  # local paths pass through

    # one byte changed in S3 → refused with a sha256 message on a clean cache; nothing written or cached
    s3 = boto3.client("s3")
    key = "zoo/" + STUB[4:] + "/model.pt"
    body = bytearray(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
    clean = tmp_path / "clean-cache"
    bad = zoo_cli("fetch", STUB, "--out", tmp_path / "bad", "--zoo", zoo, cache=clean)
    assert bad.returncode == 2, bad.stderr
    assert "sha256 mismatch" in bad.stderr and files["model.pt"]["sha256"] in bad.stderr and "model.pt" in bad.stderr
    assert not (tmp_path / "bad").exists()
    assert not any(p.name == files["model.pt"]["sha256"] for p in (clean / "zoo" / "blobs").iterdir())

    # a missing stub names the nearest existing ones
    miss = zoo_cli("fetch", "zoo:cv/detection/yolov8-n/pytorch/ultralytics/synth/pruned55-none", "--zoo", zoo,
                   cache=clean)
    assert miss.returncode == 2
    assert "no such stub" in miss.stderr and f"nearest existing stubs: {STUB}" in miss.stderr
    assert OTHER in miss.stderr  # second nearest
    short_miss = zoo_cli("fetch", "zoo:yolov8-n-synt-pruned50-none", "--zoo", zoo, cache=clean)
    assert short_miss.returncode == 2 and STUB in short_miss.stderr


def test_concurrent_fetches_share_one_cache(s3_bucket, run_dir, tmp_path):
    zoo = f"s3://{s3_bucket}"
    publish(run_dir, STUB, zoo=zoo)
    cache = tmp_path / "cache"
    env = {**os.environ, "SPARSEPIPE_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-m", "sparse_core.cli", "zoo", "fetch", STUB, "--zoo", zoo, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in results), results
    paths = {json.loads(out.strip().splitlines()[-1])["path"] for out, _, _ in results}
    assert len(paths) == 1
    entry = Path(paths.pop())
    assert sha(entry / "model.pt") == sha(run_dir / "weights" / "best.pt")
    assert not [p for p in (cache / "zoo" / "blobs").iterdir() if p.name.startswith(".")]  # no temp files left


def test_local_folder_zoo_deployment_entry_and_bad_input(tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    deploy = tmp_path / "deploy"
    deploy.mkdir()
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), deploy / "model.onnx")
    (deploy / "recipe.yaml").write_text(RECIPE)
    (deploy / "data.yaml").write_text("names: {0: a}\n")
    (deploy / "export.json").write_text("{}")
    zoo = tmp_path / "zoo"
    monkeypatch.setenv("SPARSEPIPE_ZOO", str(zoo))
    monkeypatch.setenv("SPARSEPIPE_CACHE", str(tmp_path / "cache"))
    manifest = publish(deploy, STUB)
    assert {f["path"]: f["role"] for f in manifest["files"]} == {
        "model.onnx": "onnx", "recipe.yaml": "recipe", "data.yaml": "data", "export.json": "export"}
    assert list_stubs() == [STUB]
    model = resolve_model(STUB)
    assert model.name == "model.onnx" and onnx.load(model).graph.node[0].op_type == "Relu"
    assert fetch(STUB) == model.parent  # second fetch: same cached entry

    for bad_stub, what in [("zoo:cv/detection/yolov8-n", "got 3 segment(s)"), ("cv/detection", "not a zoo stub"),
                           (STUB + "?flavour=x", "unknown query key"), ("zoo:cv/detection/a b/c/d/e/f", "bad: ['a b']")]:
        proc = zoo_cli("fetch", bad_stub)
        assert proc.returncode == 2 and what in proc.stderr, (bad_stub, proc.stderr)
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = zoo_cli("publish", empty, OTHER)
    assert proc.returncode == 2 and "no weights/best.pt, model.pt or model.onnx" in proc.stderr
    monkeypatch.delenv("SPARSEPIPE_ZOO")
    proc = zoo_cli("list")
    assert proc.returncode == 2 and "SPARSEPIPE_ZOO" in proc.stderr


def test_xz_entry_round_trip_and_tampered_unpacked_checkpoint(run_dir, tmp_path, monkeypatch):
    """A zoo kept in git stores checkpoints xz-compressed; fetch hands out model.pt verified against the manifest's
    unpacked sha256, and refuses a stream that unpacks to other bytes (or to more bytes than declared)."""
    import lzma

    zoo = tmp_path / "zoo"
    monkeypatch.setenv("SPARSEPIPE_CACHE", str(tmp_path / "cache"))
    proc = zoo_cli("publish", run_dir, STUB, "--zoo", zoo, "--xz", "--json")
    assert proc.returncode == 0, proc.stderr
    files = {f["path"]: f for f in json.loads(proc.stdout.strip().splitlines()[-1])["files"]}
    best = run_dir / "weights" / "best.pt"
    assert "model.pt" not in files and files["model.pt.xz"]["unpacked"] == {
        "path": "model.pt", "sha256": sha(best), "size": best.stat().st_size}
    packed = zoo / STUB[4:] / "model.pt.xz"
    assert packed.stat().st_size < best.stat().st_size and sha(packed) == files["model.pt.xz"]["sha256"]
    model = resolve_model(STUB, zoo=str(zoo))
    assert model.name == "model.pt" and sha(model) == sha(best)
    assert load_checkpoint(model)["train_args"]["imgsz"] == 64

    # a consistent manifest whose xz stream unpacks to other bytes: refused, nothing cached under the claimed hash
    other = tmp_path / "other.pt"
    raw = bytearray(best.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    other.write_bytes(bytes(raw))
    with open(other, "rb") as src, lzma.open(packed, "wb") as dst:
        dst.write(src.read())
    manifest = json.loads((zoo / STUB[4:] / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == "model.pt.xz")
    entry.update(sha256=sha(packed), size=packed.stat().st_size)
    (zoo / STUB[4:] / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("SPARSEPIPE_CACHE", str(tmp_path / "cache2"))
    proc = zoo_cli("fetch", STUB, "--zoo", zoo, cache=tmp_path / "cache2")
    assert proc.returncode == 2 and "unpacked checkpoint does not match its manifest" in proc.stderr, proc.stderr
    assert not (tmp_path / "cache2" / "zoo" / "blobs" / entry["unpacked"]["sha256"]).exists()
    entry["unpacked"]["path"] = "../evil.pt"
    (zoo / STUB[4:] / "manifest.json").write_text(json.dumps(manifest))
    proc = zoo_cli("fetch", STUB, "--zoo", zoo, cache=tmp_path / "cache2")
    assert proc.returncode == 2 and "escapes the entry" in proc.stderr, proc.stderr
