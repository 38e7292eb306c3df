"""Trust boundary (issue 14, items 1-2): a checkpoint is data, never code; no name from a manifest, an S3 key or
an annotation file reaches outside its folder.

Every malicious checkpoint here carries a payload that creates a marker file when unpickled; through every entry
point (real CLI in a subprocess) the marker must never appear, the exit code is 2 and stderr is one line.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from sparse_core.data.synth import synth_dataset

IMGSZ = 64
STUB = "zoo:cv/detection/yolov8-n/pytorch/ultralytics/synth/evil-none"
KD_RECIPE = """modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: 1
  - !OutputDistillationModifier
    start_epoch: 0
    end_epoch: 1
"""


def cli(*args, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparse_core.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    return lines[0]


class _System:
    """Unpickles as os.system(cmd)."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


class _EvalModel:
    """Unpickles as DetectionModel(cfg) whose activation is Python code: an allow-listed class must never be
    *constructed* by the unpickler (Ultralytics' parse_model would eval the activation)."""

    def __init__(self, marker: Path):
        from ultralytics.nn.tasks import yaml_model_load

        self.cfg = {**yaml_model_load("yolov8n.yaml"), "activation": f"__import__('pathlib').Path('{marker}').touch()"}

    def __reduce__(self):
        from ultralytics.nn.tasks import DetectionModel

        return DetectionModel, (self.cfg,)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synth_dataset(tmp_path_factory.mktemp("data"), n_train=4, n_val=2, imgsz=IMGSZ, seed=5, n_classes=2)


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """(checkpoint whose unpickling runs `touch MARKER`, MARKER)."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil" / "best.pt"
    path.parent.mkdir()
    torch.save({"model": _System(f"touch {marker}"), "epoch": 0, "train_args": {}}, path)
    return path, marker


@pytest.fixture
def evil_ctor(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED_CTOR"
    path = tmp_path / "evil_ctor.pt"
    torch.save({"model": _EvalModel(marker), "epoch": 0}, path)
    return path, marker


def _entry_points(pt: Path, data: Path, tmp: Path) -> dict[str, list]:
    recipe = tmp / "kd.yaml"
    recipe.write_text(KD_RECIPE)
    common = ["--data", data, "--imgsz", IMGSZ, "--batch", 2, "--workers", 0, "--project", tmp / "runs", "--no-plots"]
    return {
        "recipe check --model": ["recipe", "check", recipe, "--model", pt],
        "train --model": ["train", "--model", pt, *common],
        "train --teacher": ["train", "--model", "yolov8n.yaml", "--recipe", recipe, "--teacher", pt, *common],
        "train --resume": ["train", "--resume", pt],
        "export": ["export", "--weights", pt, "--out", tmp / "deploy"],
        "val": ["val", "--weights", pt, "--data", data, "--imgsz", IMGSZ],
    }


def test_malicious_checkpoint_runs_through_no_entry_point(evil, evil_ctor, data, tmp_path):
    for pt, marker in (evil, evil_ctor):
        for name, args in _entry_points(pt, data, tmp_path).items():
            proc = cli(*args)
            line = one_line(proc)
            assert not marker.exists(), (name, "payload ran")
            assert str(pt) in line, (name, line)
            if pt == evil[0]:
                assert "--trust-checkpoint" in line and "posix.system" in line, (name, line)
            else:  # loads as a bare, never-initialised module and is refused as incomplete
                assert "not an Ultralytics/sparsepipe checkpoint" in line, (name, line)
        assert not (tmp_path / "runs").exists() and not (tmp_path / "deploy").exists()


def test_trust_flag_reads_only_the_named_local_file(tmp_path):
    """A legitimate local file only full unpickling can read loads with --trust-checkpoint (one warning line)."""
    import argparse

    from ultralytics.nn.tasks import DetectionModel

    legacy = tmp_path / "legacy.pt"
    torch.save({"model": DetectionModel("yolov8n.yaml", nc=2, verbose=False), "opt": argparse.Namespace(lr=0.1)},
               legacy)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("modifiers:\n  - !ConstantPruningModifier\n    start_epoch: 0.0\n    params: __ALL_PRUNABLE__\n")
    refused = one_line(cli("recipe", "check", recipe, "--model", legacy))
    assert "argparse.Namespace" in refused and "--trust-checkpoint" in refused
    ok = cli("recipe", "check", recipe, "--model", legacy, "--trust-checkpoint", "--json")
    assert ok.returncode == 0, ok.stderr[-2000:]
    warnings = [ln for ln in ok.stderr.splitlines() if "full unpickling" in ln]
    assert len(warnings) == 1 and str(legacy) in warnings[0]
    assert json.loads(ok.stdout.strip().splitlines()[-1])["model"]["prunable"] > 50


def _local_zoo_with(pt: Path, tmp: Path) -> Path:
    run = tmp / "pubrun"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "best.pt").write_bytes(pt.read_bytes())
    zoo = tmp / "zoo"
    proc = cli("zoo", "publish", run, STUB, "--zoo", zoo, env={"SPARSEPIPE_CACHE": str(tmp / "cache")})
    assert proc.returncode == 0, proc.stderr
    return zoo


def test_zoo_checkpoint_is_never_unpickled_even_with_the_flag(evil, data, tmp_path):
    pt, marker = evil
    zoo = _local_zoo_with(pt, tmp_path)
    env = {"SPARSEPIPE_CACHE": str(tmp_path / "cache")}
    common = ["--data", data, "--imgsz", IMGSZ, "--workers", 0, "--project", tmp_path / "runs", "--zoo", zoo]
    for args in (["train", "--model", STUB, *common], ["train", "--model", STUB, "--trust-checkpoint", *common],
                 ["train", "--model", "yolov8n.yaml", "--teacher", STUB, "--trust-checkpoint", *common],
                 ["zoo", "fetch", STUB, "--zoo", zoo]):
        line = one_line(cli(*args, env=env))
        assert "posix.system" in line and "never fully unpickled" in line, line
        assert not marker.exists()
    assert not (tmp_path / "runs").exists()


def test_registry_checkpoint_is_refused_by_models_pull(evil, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from mlflow_server import start_mlflow
    from test_tracking_server import make_deploy_dir

    pt, marker = evil
    deploy = make_deploy_dir(tmp_path / "deploy")
    (deploy / "model.pt").write_bytes(pt.read_bytes())
    uri, stop = start_mlflow(tmp_path / "mlflow", backend="sqlite")
    try:
        reg = cli("models", "register", deploy, "--name", "evil", "--tracking-uri", uri)
        assert reg.returncode == 0, reg.stderr[-2000:]
        out = tmp_path / "pulled"
        line = one_line(cli("models", "pull", "evil", "--out", out, "--tracking-uri", uri))
        assert "model.pt" in line and "posix.system" in line
        assert not out.exists() and not marker.exists()
        assert not list(tmp_path.glob(".pulled*"))  # no half-written pull folder left next to it
    finally:
        stop()


# ---------------------------------------------------------------------------------------------- paths


def _published_entry(tmp: Path) -> tuple[Path, Path]:
    """A local zoo holding one small entry (a recipe and an ONNX file); returns (zoo, manifest path)."""
    import onnx
    from onnx import TensorProto, helper

    deploy = tmp / "deploy"
    deploy.mkdir()
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), deploy / "model.onnx")
    (deploy / "recipe.yaml").write_text("modifiers:\n  - !ConstantPruningModifier\n    params: __ALL_PRUNABLE__\n")
    zoo = tmp / "zoo"
    assert cli("zoo", "publish", deploy, STUB, "--zoo", zoo).returncode == 0
    return zoo, zoo / STUB[4:] / "manifest.json"


def test_crafted_manifests_are_refused_and_cache_hits_rehash(tmp_path):
    zoo, manifest_path = _published_entry(tmp_path)
    good = json.loads(manifest_path.read_text())
    env = {"SPARSEPIPE_CACHE": str(tmp_path / "cache")}
    secret = tmp_path / "secret.txt"  # a local file outside the zoo the crafted manifest points at
    secret.write_text("not for the entry\n")
    blobs = tmp_path / "cache" / "zoo" / "blobs"
    rel_secret = os.path.relpath(secret, blobs)
    onnx_i = next(i for i, f in enumerate(good["files"]) if f["path"] == "model.onnx")
    crafted = {
        "sha256 as a path": ("sha256", rel_secret, "expected 64 lowercase hex digits"),
        "upper-case sha256": ("sha256", good["files"][onnx_i]["sha256"].upper(), "expected 64 lowercase hex digits"),
        "path with ..": ("path", "../../../escape.onnx", "escapes the entry"),
        "absolute path": ("path", str(tmp_path / "abs.onnx"), "escapes the entry"),
        "negative size": ("size", -1, "expected a byte count"),
    }
    out = tmp_path / "fetched"
    for name, (field, value, expected) in crafted.items():
        bad = json.loads(json.dumps(good))
        bad["files"][onnx_i][field] = value
        if field == "sha256" and value == rel_secret:
            bad["files"][onnx_i]["size"] = secret.stat().st_size
        manifest_path.write_text(json.dumps(bad))
        line = one_line(cli("zoo", "fetch", STUB, "--zoo", zoo, "--out", out, env=env))
        assert expected in line and f"files[{onnx_i}]" in line, (name, line)
        assert not out.exists() and not (tmp_path / "escape.onnx").exists() and not (tmp_path / "abs.onnx").exists()
    manifest_path.write_text(json.dumps(good))

    # a cache hit is hashed again: a blob changed in the cache (same size) is replaced by the verified object
    assert cli("zoo", "fetch", STUB, "--zoo", zoo, env=env).returncode == 0
    blob = blobs / good["files"][onnx_i]["sha256"]
    original = blob.read_bytes()
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(len(original)))
    proc = cli("zoo", "fetch", STUB, "--zoo", zoo, "--out", out, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.onnx").read_bytes() == original and blob.read_bytes() == original


def test_s3_keys_that_escape_are_refused_before_anything_is_written(s3_bucket, tmp_path):
    """SeaweedFS itself refuses keys with '..' (AWS S3 stores them): the guard is shown on the names S3 can hold
    and on the crafted keys directly; a real prefix download keeps odd-but-inside names ('..x', '...')."""
    import boto3
    from botocore.exceptions import ClientError

    from sparse_core import s3, steps
    from sparse_core.errors import UserError
    from sparse_core.tracking.step_run import StepContext

    client = boto3.client("s3")
    with pytest.raises(ClientError, match="InvalidRequest"):
        client.put_object(Bucket=s3_bucket, Key="data/../escaped-by-s3-key.txt", Body=b"x")
    uri = f"s3://{s3_bucket}/data"
    for key in ("data/../escaped.txt", "data/a/../../escaped.txt", "data/./x", "data/a//x", "data/..", "data/a\\..\\x"):
        with pytest.raises(UserError, match="key escapes the data set folder"):
            s3.relative_key(uri, key)
    for key, body in (("data/..x", b"1"), ("data/.../y", b"2"), ("data/images/a.txt", b"3")):
        client.put_object(Bucket=s3_bucket, Key=key, Body=body)
    dest = tmp_path / "scratch"
    s3.download_prefix(uri, dest)
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == {
        "..x": b"1", ".../y": b"2", "images/a.txt": b"3"}
    with pytest.raises(UserError, match="does not name a file"):
        steps.fetch_checkpoint(f"s3://{s3_bucket}/data/..", str(tmp_path / "ckpt"), ctx=StepContext(cache_dir="none"))
    assert not (tmp_path / "ckpt").exists()


def _coco(tmp: Path, file_name: str) -> Path:
    src = Path(tempfile.mkdtemp(dir=tmp)) / "coco"
    (src / "images").mkdir(parents=True, exist_ok=True)
    (src / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": file_name, "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "a"}]}))
    return src / "annotations.json"


def _voc(tmp: Path, filename: str, image_id: str = "img1") -> Path:
    root = Path(tempfile.mkdtemp(dir=tmp)) / "voc"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / "img1.xml").write_text(
        f"<annotation><filename>{filename}</filename><size><width>64</width><height>64</height></size>"
        "<object><name>a</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text(f"{image_id}\n")
    return root


def test_annotation_names_and_data_yamls_pointing_outside_are_refused(data, tmp_path):
    from PIL import Image

    outside = tmp_path / "outside.jpg"  # an image that exists, outside every data set root
    Image.new("RGB", (64, 64)).save(outside)
    out = tmp_path / "out"
    cases = {
        "coco absolute": (_coco(tmp_path, str(outside)), "coco", "images[0].file_name"),
        "coco ..": (_coco(tmp_path, "../../outside.jpg"), "coco", "images[0].file_name"),
        "voc absolute": (_voc(tmp_path, str(outside)), "voc", "<filename>"),
        "voc ..": (_voc(tmp_path, "../../outside.jpg"), "voc", "<filename>"),
        "voc image id": (_voc(tmp_path, "img1.jpg", image_id="../../../outside"), "voc", "train.txt:1"),
    }
    yolo = tmp_path / "yolo"
    yolo.mkdir()
    (yolo / "data.yaml").write_text(f"path: {yolo}\ntrain: ../\nval: {tmp_path}\nnames: [a]\n")
    cases["yolo train .."] = (yolo / "data.yaml", "yolo", "train")
    for name, (src, fmt, field) in cases.items():
        line = one_line(cli("data", "prepare", src, "--format", fmt, "--out", out))
        assert field in line and "outside" in line, (name, line)
        assert not out.exists()

    # training / validation data yamls: an entry outside the data set root is refused before anything is written
    from ultralytics.nn.tasks import DetectionModel

    legit = tmp_path / "legit.pt"
    torch.save({"model": DetectionModel("yolov8n.yaml", nc=2, verbose=False), "epoch": -1}, legit)
    bad = tmp_path / "bad.yaml"
    cfg = {"path": str(data.parent), "train": "images/train", "val": str(tmp_path), "names": ["a", "b"]}
    bad.write_text(json.dumps(cfg))
    for args in (["train", "--model", "yolov8n.yaml", "--data", bad, "--epochs", 1, "--project", tmp_path / "runs"],
                 ["val", "--weights", legit, "--data", bad, "--imgsz", IMGSZ]):
        line = one_line(cli(*args))
        assert "field 'val'" in line and "outside the data set root" in line, line
    assert not (tmp_path / "runs").exists()
