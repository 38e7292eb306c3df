"""Zoo entries: publish a run or deployment folder under a stub, fetch (verified, cached) and list them.

An entry is ``<stub path>/manifest.json`` plus its files under ``<stub path>/``. The manifest lists every file
with its sha256, size and role (checkpoint, onnx, recipe, summary, data, export, config) and maps recipe types
(``original``, ``transfer_learn``, ...) to recipe files. The manifest is uploaded last, so an entry is visible only
once complete.

What gets published from a folder:
- run folder (``sparsepipe train``): ``weights/best.pt`` (as ``model.pt``), recipe ``*.yaml``/``*.md`` (files
  holding a ``Modifier``), ``summary.json``, ``args.yaml``;
- deployment folder (``sparsepipe export``): ``model.onnx``, ``model.pt`` if present, ``recipe.yaml``,
  ``data.yaml``, ``export.json``;
- a model card ``model.md`` when present (SparseZoo folders, ``sparsepipe zoo import``), ``provenance.json`` (what
  made the model: inputs, their hashes, the training curve).

``publish(..., compress=True)`` stores checkpoints xz-compressed (``model.pt.xz``, for a zoo committed to git); the
manifest lists the compressed file's hash and, under ``unpacked``, the checkpoint's own, so ``fetch`` verifies both
and hands out ``model.pt`` as for any entry.
"""

from __future__ import annotations

import difflib
import json
import lzma
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from sparse_core import __version__, progress
from sparse_core.atomic import atomic_dir
from sparse_core.data.hashing import file_sha256
from sparse_core.errors import UserError
from sparse_core.safe_load import check_safe
from sparse_core.tracking.redaction import redact
from sparse_core.zoo import cache
from sparse_core.zoo.store import open_store
from sparse_core.zoo.stub import FIELDS, Stub, parse_stub, short_name

MANIFEST = "manifest.json"
CHECKPOINT_NAMES = ("model.pt", "best.pt", "last.pt")
_NOT_RECIPES = {"args.yaml", "data.yaml", "dataset.yaml", "model.md"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def recipe_type(name: str) -> str:
    """``recipe.yaml`` / ``recipe_original.md`` → original; ``recipe_transfer_learn.md`` → transfer_learn."""
    stem = Path(name).stem.lower()
    for prefix in ("recipe_", "recipe-"):
        stem = stem.removeprefix(prefix)
    return "original" if stem in ("recipe", "original", "") else stem


def _is_recipe(path: Path) -> bool:
    if path.name in _NOT_RECIPES or path.suffix not in (".yaml", ".yml", ".md"):
        return False
    try:
        return "Modifier" in path.read_text(errors="replace")
    except OSError:
        return False


def collect(src_dir: Path) -> dict[str, tuple[Path, str]]:
    """Entry file name → (source file, role) for a run or deployment folder."""
    if not src_dir.is_dir():
        raise UserError(f"{src_dir}: not a folder; expected a run folder (weights/best.pt) or a deployment folder "
                        "(model.onnx)")
    files: dict[str, tuple[Path, str]] = {}
    for cand in (src_dir / "weights" / "best.pt", src_dir / "model.pt"):
        if cand.is_file():
            files["model.pt"] = (cand, "checkpoint")
            break
    if (src_dir / "model.onnx").is_file():
        files["model.onnx"] = (src_dir / "model.onnx", "onnx")
    if not files:
        raise UserError(f"{src_dir}: no weights/best.pt, model.pt or model.onnx; expected a run folder from "
                        "'sparsepipe train' or a deployment folder from 'sparsepipe export'")
    for p in sorted(list(src_dir.glob("*")) + list((src_dir / "recipes").glob("*"))):
        if p.is_file() and _is_recipe(p):
            name = p.name if p.parent == src_dir else f"recipes/{p.name}"
            files[name] = (p, "recipe")
    for name, role in (("summary.json", "summary"), ("export.json", "export"), ("data.yaml", "data"),
                       ("args.yaml", "config"), ("model.md", "card"), ("provenance.json", "provenance")):
        if (src_dir / name).is_file():
            files[name] = (src_dir / name, role)
    return files


TEXT_ROLES = ("recipe", "summary", "export", "data", "config", "provenance")


def _redacted_text_files(files: dict[str, tuple[Path, str]], staging: Path) -> dict[str, tuple[Path, str]]:
    """Text files as they will be uploaded: secrets masked as MLflow params are (checkpoints go unchanged)."""
    out = {}
    for name, (path, role) in files.items():
        if role in TEXT_ROLES:
            clean = staging / name
            clean.parent.mkdir(parents=True, exist_ok=True)
            clean.write_text(redact(path.read_text(errors="replace")))
            path = clean
        out[name] = (path, role)
    return out


def _xz_checkpoints(files: dict[str, tuple[Path, str]], staging: Path) -> tuple[dict, dict[str, dict]]:
    """Checkpoints replaced by ``NAME.xz`` copies in ``staging``; returns (files, {NAME.xz: unpacked facts})."""
    out, unpacked = {}, {}
    for name, (path, role) in files.items():
        if role == "checkpoint":
            packed = staging / f"{name}.xz"
            packed.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as src, lzma.open(packed, "wb", preset=9 | lzma.PRESET_EXTREME) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            unpacked[packed.name] = {"path": name, "sha256": file_sha256(path), "size": path.stat().st_size}
            name, path = packed.name, packed
        out[name] = (path, role)
    return out, unpacked


def publish(src_dir, stub: str, zoo: str | None = None, overwrite: bool = False, compress: bool = False) -> dict:
    """Upload a run/deployment folder as ``stub`` (checkpoints xz-compressed with ``compress``); returns the
    manifest."""
    parsed = parse_stub(stub, allow_query=False)
    if parsed.is_short:
        raise UserError(f"{stub}: publish needs a full stub; expected zoo:" + "/".join(f.upper() for f in FIELDS))
    store = open_store(zoo)
    files = collect(Path(src_dir))
    staging = tempfile.TemporaryDirectory(prefix="sparsepipe-publish-")
    files = _redacted_text_files(files, Path(staging.name))
    files, unpacked = _xz_checkpoints(files, Path(staging.name)) if compress else (files, {})
    if store.exists(f"{parsed.path}/{MANIFEST}") and not overwrite:
        published = _manifest(parsed, store)[0]
        ours = {(name, file_sha256(path)) for name, (path, _role) in files.items()}
        if {(f["path"], f["sha256"]) for f in published["files"]} == ours:
            staging.cleanup()
            return published  # the same files: a retried publish (manifest last, so the entry is complete)
        raise UserError(f"{stub}: already published in {store.uri}; expected a new stub (or --overwrite)")
    entries, recipes = [], {}
    for name, (path, role) in sorted(files.items()):
        entries.append({"path": name, "role": role, "sha256": file_sha256(path), "size": path.stat().st_size,
                        **({"unpacked": unpacked[name]} if name in unpacked else {})})
        if role == "recipe":
            rtype = recipe_type(name)
            if rtype in recipes:
                raise UserError(f"{src_dir}: two recipes of type {rtype!r} ({recipes[rtype]}, {name}); expected one "
                                "file per recipe type")
            recipes[rtype] = name
    manifest = {"stub": str(parsed), **parsed.fields, "files": entries, "recipes": recipes,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sparsepipe_version": __version__}
    for name, (path, _role) in sorted(files.items()):
        store.upload(f"{parsed.path}/{name}", path)
        progress.emit(event="zoo_upload", stub=str(parsed), file=name)  # the manifest, uploaded last, is not yet
    with tempfile.TemporaryDirectory() as tmp:
        manifest = json.loads(redact(json.dumps(manifest)))
        manifest_path = Path(tmp) / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        store.upload(f"{parsed.path}/{MANIFEST}", manifest_path)
    staging.cleanup()
    return manifest


def list_stubs(zoo: str | None = None) -> list[str]:
    """Every published stub in the zoo, as ``zoo:...`` strings, sorted."""
    store = open_store(zoo)
    suffix = f"/{MANIFEST}"
    return sorted("zoo:" + k[: -len(suffix)] for k in store.keys(suffix) if k.count("/") == len(FIELDS))


def _missing(stub: Stub, store) -> UserError:
    """'No such stub' with the nearest existing stubs (difflib), matching short names too."""
    known = list_stubs(store.uri)
    candidates = {k: k for k in known}
    if stub.is_short:
        candidates.update({"zoo:" + short_name(k[4:]): k for k in known})
    near = list(dict.fromkeys(candidates[m] for m in difflib.get_close_matches(str(stub), list(candidates), n=5,
                                                                                cutoff=0.5)))
    hint = ("; nearest existing stubs: " + ", ".join(near)) if near else (
        f"; the zoo holds {len(known)} stub(s)" + (f": {', '.join(known[:10])}" if known else ""))
    return UserError(f"{stub}: no such stub in zoo {store.uri}{hint}")


def _resolve_short(stub: Stub, store) -> Stub:
    matches = [k for k in list_stubs(store.uri) if short_name(k[4:]) == stub.path]
    if len(matches) == 1:
        return Stub(matches[0][4:], stub.recipe_type)
    if len(matches) > 1:
        raise UserError(f"{stub}: short name matches several stubs ({', '.join(matches)}); expected a full stub")
    raise _missing(stub, store)


def _manifest(stub: Stub, store) -> tuple[dict, bytes]:
    raw = store.read(f"{stub.path}/{MANIFEST}")
    if raw is None:
        raise _missing(stub, store)
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        assert isinstance(files, list) and all(isinstance(f, dict) and {"path", "sha256", "size"} <= set(f)
                                               for f in files)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise UserError(f"{stub}: manifest in {store.uri} is not a sparsepipe zoo manifest; expected JSON with "
                        "'files' [{path, sha256, size}]") from None
    for i, f in enumerate(files):
        where = f"{stub}: manifest in {store.uri}: files[{i}]"
        entry_path(f["path"], f"{where}.path")
        if not (isinstance(f["sha256"], str) and _SHA256.fullmatch(f["sha256"])):
            raise UserError(f"{where}.sha256: {str(f['sha256'])[:80]!r}; expected 64 lowercase hex digits")
        if not (isinstance(f["size"], int) and not isinstance(f["size"], bool) and f["size"] >= 0):
            raise UserError(f"{where}.size: {str(f['size'])[:40]!r}; expected a byte count (integer >= 0)")
        if "unpacked" in f:
            u = f["unpacked"]
            if not (isinstance(u, dict) and isinstance(u.get("sha256"), str) and _SHA256.fullmatch(u["sha256"])
                    and isinstance(u.get("size"), int) and u["size"] >= 0
                    and entry_path(u.get("path"), f"{where}.unpacked.path") == f["path"].removesuffix(".xz")
                    and f["path"].endswith(".xz")):
                raise UserError(f"{where}.unpacked: expected {{path: {f['path']} without .xz, sha256, size}} "
                                "beside an .xz file")
    listed = {f["path"] for f in files}
    recipes = manifest.get("recipes") or {}
    if not isinstance(recipes, dict) or any(not isinstance(v, str) or v not in listed for v in recipes.values()):
        raise UserError(f"{stub}: manifest in {store.uri}: recipes: expected recipe type -> a path listed in 'files'")
    return manifest, raw


def entry_path(rel, where: str) -> str:
    """A file name from a manifest: relative, '/'-separated, no '..', no empty part, not the manifest itself."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if (not parts or rel.startswith("/") or "\\" in rel or "\0" in rel or rel == MANIFEST
            or any(p in ("", ".", "..") for p in parts)):
        raise UserError(f"{where}: {str(rel)[:120]!r} escapes the entry; expected a relative path inside it "
                        "(no '..', no leading '/')")
    return rel


def fetch(stub: str, out=None, zoo: str | None = None) -> Path:
    """Download (or reuse from the cache) every file of ``stub``, verify it, and return the entry folder.

    Without ``out`` the folder is in the cache (``$SPARSEPIPE_CACHE/zoo/entries/...``; treat it as read-only);
    with ``out`` the files are copied there (a new or empty folder, or an earlier fetch, which is replaced).
    """
    import hashlib

    parsed = parse_stub(stub)
    store = open_store(zoo)
    if parsed.is_short:
        parsed = _resolve_short(parsed, store)
    manifest, raw = _manifest(parsed, store)
    blobs = {}
    for f in manifest["files"]:
        rel = f["path"]
        got = cache.blob(store, f"{parsed.path}/{rel}", f["sha256"], f["size"], str(parsed))
        if "unpacked" in f:  # an xz-compressed checkpoint: handed out as the file it packs, verified too
            u = f["unpacked"]
            rel, got = u["path"], cache.unpacked(got, u["sha256"], u["size"], str(parsed))
        blobs[rel] = got
        if rel.endswith(".pt"):  # hash verified first; then refuse a checkpoint only full unpickling could read
            check_safe(blobs[rel], str(parsed))
    digest = hashlib.sha256(raw).hexdigest()[:16]
    hashes = {(f.get("unpacked") or f)["path"]: (f.get("unpacked") or f)["sha256"] for f in manifest["files"]}
    entry = cache.assemble(cache.cache_root() / "entries" / parsed.path / digest, blobs, {MANIFEST: raw}, hashes)
    if out is None:
        return entry
    out = Path(out)
    with atomic_dir(out, replace_if=lambda p: (p / MANIFEST).is_file()) as tmp:
        for rel, src in blobs.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
        (tmp / MANIFEST).write_bytes(raw)
    return out.absolute()


def _entry_manifest(entry: Path) -> dict:
    return json.loads((entry / MANIFEST).read_text())


def resolve_model(source: str, zoo: str | None = None) -> Path:
    """``zoo:...`` → the fetched checkpoint (``model.pt``; else ``model.onnx``); a local path is returned as is."""
    if not str(source).startswith("zoo:"):
        return Path(source)
    entry = fetch(source, zoo=zoo)
    names = {(f.get("unpacked") or f)["path"]: f.get("role") for f in _entry_manifest(entry)["files"]}
    for name in (*CHECKPOINT_NAMES, "model.onnx"):
        if name in names:
            return entry / name
    raise UserError(f"{source}: entry has no checkpoint; it holds {sorted(names)}; expected model.pt")


def resolve_recipe(source: str, zoo: str | None = None) -> Path:
    """``zoo:STUB[?recipe_type=T]`` → the fetched recipe file (type T, else ``original``, else the only one)."""
    if not str(source).startswith("zoo:"):
        return Path(source)
    parsed = parse_stub(source)
    entry = fetch(source, zoo=zoo)
    recipes = _entry_manifest(entry).get("recipes") or {}
    if not recipes:
        raise UserError(f"{source}: entry has no recipe; expected a recipe file in the published folder")
    if parsed.recipe_type:
        if parsed.recipe_type not in recipes:
            raise UserError(f"{source}: no recipe of type {parsed.recipe_type!r}; expected one of {sorted(recipes)}")
        return entry / recipes[parsed.recipe_type]
    if "original" in recipes:
        return entry / recipes["original"]
    if len(recipes) == 1:
        return entry / next(iter(recipes.values()))
    raise UserError(f"{source}: several recipes {sorted(recipes)}; expected ?recipe_type=one of them")


def clear_cache() -> None:
    """Remove the zoo cache (tests, or to free disk)."""
    shutil.rmtree(cache.cache_root(), ignore_errors=True)
    os.makedirs(cache.cache_root(), exist_ok=True)


def resolve_source(model: str, zoo: str) -> Path | None:
    """Local file for ``model``; None for an Ultralytics model name (yaml bundled with Ultralytics)."""
    if model.startswith("zoo:"):
        return Path(resolve_model(model, zoo=zoo or None))
    if model.startswith("s3://"):
        from sparse_core import s3

        return s3.download_file(model)
    path = Path(model)
    if path.is_file():
        return path
    if model.endswith((".yaml", ".yml")) and not path.parent.parts:
        from ultralytics.nn.tasks import yaml_model_load

        try:
            yaml_model_load(model)
        except (FileNotFoundError, OSError):
            raise UserError(f"model {model}: neither a file nor an Ultralytics model yaml name") from None
        return None
    raise UserError(f"model {model}: not found; expected a zoo: stub, a .pt path, an s3:// URI or a model yaml")
