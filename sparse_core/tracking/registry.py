"""MLflow Model Registry for sparsepipe deployment folders: register, list, pull, promote a champion.

A deployment folder (``model.onnx`` plus ``model.pt``, ``recipe.yaml``, ``data.yaml``, ``export.json`` when
present) is logged as an MLflow *ONNX flavor* model: ``model.onnx`` is the flavor's file (loadable with
``mlflow.onnx.load_model`` / pyfunc) and the other files ride along as the flavor's ``extra_files``. The version
carries the lineage tags plus ``onnx_sha256``, which ``pull_model`` checks, so a pulled ``model.onnx`` is
byte-identical to the exported one.
"""

from __future__ import annotations

import json
import operator
import os
import re
import shutil
import tempfile
from pathlib import Path

from sparse_core import progress
from sparse_core.errors import UserError
from sparse_core.tracking import keys
from sparse_core.tracking.connection import connect, http_limits, resolve_uri
from sparse_core.tracking.lineage import file_sha256, lineage_tags, sha256_bytes
from sparse_core.tracking.redaction import redact, redact_value
from sparse_core.tracking.tracker import ensure_experiment, stage_for_upload

CHAMPION = "champion"
SOURCE_FILE = "registry.json"  # written into pulled folders: where the model came from
_ALIAS_RE = re.compile(r"^[A-Za-z_][\w\-]*$")


def _client(tracking_uri: str | None):
    uri = resolve_uri(tracking_uri)
    if not uri:
        raise UserError("no MLflow tracking URI: pass --tracking-uri URI or set MLFLOW_TRACKING_URI")
    return uri, connect(uri)


def _check_alias(alias: str) -> None:
    if not _ALIAS_RE.match(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise UserError(f"alias {alias!r}: expected a name like 'candidate' or 'champion' "
                        "(letters, digits, _ and -; not 'latest' or 'v<number>')")


class _GlobalUri:
    """mlflow.onnx.log_model reads MLflow's global tracking/registry URIs: set them for the block, then restore
    them (and the MLFLOW_*_URI variables MLflow exports for subprocesses) exactly as they were."""

    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self):
        import mlflow
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        self.saved = (tracking_utils._tracking_uri, registry_utils._registry_uri,
                      {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")})
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)

    def __exit__(self, *exc):
        import mlflow
        from mlflow.tracking._model_registry import utils as registry_utils

        mlflow.set_tracking_uri(self.saved[0])
        registry_utils._registry_uri = self.saved[1]
        for k, v in self.saved[2].items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def register_model(deploy_dir, name: str, run_id: str | None = None, alias: str | None = None,
                   tracking_uri: str | None = None, tags: dict | None = None) -> dict:
    """Log ``deploy_dir`` as an ONNX-flavor model in ``run_id`` and register it as a new version of ``name``.

    ``run_id`` should be the run that produced the checkpoint (default: ``mlflow_run_id`` in ``export.json``,
    else a new run ``register-<name>``). Version tags: the run's lineage tags, lineage computed from the folder,
    ``onnx_sha256``, then ``tags``. ``alias`` (e.g. ``candidate``) is moved to the new version.
    Returns ``{'name', 'version', 'run_id', 'model_uri', 'onnx_sha256'}``.
    """
    import mlflow
    import onnx
    from mlflow.exceptions import MlflowException

    deploy = Path(deploy_dir)
    onnx_path = deploy / "model.onnx"
    if not onnx_path.is_file():
        raise UserError(f"{deploy}: no model.onnx; expected a deployment folder written by `sparsepipe export`")
    if alias:
        _check_alias(alias)
    export_info = {}
    if (deploy / "export.json").is_file():
        try:
            export_info = json.loads((deploy / "export.json").read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{deploy / 'export.json'}:{err.lineno}: not valid JSON ({err.msg})") from None
    uri, client = _client(tracking_uri)
    run_id = run_id or export_info.get("mlflow_run_id") or None

    onnx_sha = file_sha256(onnx_path)
    try:
        onnx_model = onnx.load(str(onnx_path))
    except Exception as err:  # noqa: BLE001 - truncated or foreign file
        raise UserError(f"{onnx_path}: not a readable ONNX model ({str(err)[:200]})") from None
    with tempfile.TemporaryDirectory(prefix="sparsepipe-register-") as tmp:
        extra_files = []
        for f in sorted(deploy.iterdir()):
            if f.is_file() and f.name != "model.onnx" and not f.name.startswith("."):
                stage_for_upload(f, Path(tmp) / f.name)  # secrets masked in text files; binaries unchanged
                extra_files.append(str(Path(tmp) / f.name))
        # the flavor re-serialises the proto; if that is not byte-identical, ship the original file as well
        if sha256_bytes(onnx_model.SerializeToString()) != onnx_sha:
            os.makedirs(Path(tmp) / "orig", exist_ok=True)  # lands as extra_files/model.onnx; pull prefers it
            shutil.copy2(onnx_path, Path(tmp) / "orig" / "model.onnx")
            extra_files.append(str(Path(tmp) / "orig" / "model.onnx"))

        try:
            with http_limits(retries=3, timeout=300):
                if run_id is None:
                    exp_id = ensure_experiment(client, "sparsepipe")
                    run_id = client.create_run(exp_id, run_name=f"register-{name}").info.run_id
                    client.set_terminated(run_id)
                run = client.get_run(run_id)
                version_tags = lineage_tags(
                    recipe=deploy / "recipe.yaml" if (deploy / "recipe.yaml").is_file() else None,
                    data_hash=export_info.get("data_hash"), base=export_info.get("base"))
                version_tags.update({k: v for k, v in run.data.tags.items() if k in keys.LINEAGE_TAG_KEYS})
                version_tags[keys.TAG_ONNX_SHA256] = onnx_sha
                version_tags.update({str(k): str(v) for k, v in (tags or {}).items()})
                version_tags = {k: redact_value(k, v) for k, v in version_tags.items()}
                with _GlobalUri(uri):
                    # explicit requirements: MLflow would otherwise infer them by loading the model in a
                    # subprocess (seconds, for the same answer)
                    info = mlflow.onnx.log_model(onnx_model, name="model", run_id=run_id,
                                                 save_as_external_data=False, extra_files=extra_files,
                                                 pip_requirements=mlflow.onnx.get_default_pip_requirements())
                    mv = mlflow.register_model(info.model_uri, name, tags=version_tags)
                progress.emit(event="registered", name=name, version=str(mv.version))  # before the alias
                if alias:
                    client.set_registered_model_alias(name, alias, mv.version)
        except MlflowException as err:
            raise UserError(f"MLflow {redact(uri)}: registering {name!r}: {redact(str(err))[:300]}") from None
    return {"name": name, "version": str(mv.version), "run_id": run_id, "model_uri": f"models:/{name}/{mv.version}",
            "onnx_sha256": onnx_sha}


def register_or_reuse(deploy_dir, name: str, run_id: str, alias: str | None, tracking_uri: str,
                      tags: dict, extra: dict, step_key: str = "") -> dict:
    """``register_model``, unless a version of ``name`` exists that this pipeline step already created (same
    ``pipeline_run_id`` and ``step_key`` tags: a retried step) or with the same ``onnx_sha256``, recipe and
    ``extra`` tags: then that version is reused (``alias`` moved to it, unless it is there already). The result
    has ``reused`` True/False."""
    onnx_sha = file_sha256(Path(deploy_dir) / "model.onnx")
    _, client = _client(tracking_uri)
    mine = {keys.TAG_PIPELINE_RUN_ID: tags.get(keys.TAG_PIPELINE_RUN_ID), keys.TAG_STEP_KEY: step_key}
    mine = mine if all(mine.values()) else {}
    existing = (_version_tagged(client, name, mine) if mine else None) or _same_version(
        client, name, onnx_sha, tags.get(keys.TAG_RECIPE_SHA256), extra)
    if existing is None:
        result = register_model(deploy_dir, name, run_id=run_id, alias=alias, tracking_uri=tracking_uri,
                                tags={**tags, **mine, **extra})
        return {**result, "reused": False}
    if alias and _alias_version(client, name, alias) != str(existing.version):
        client.set_registered_model_alias(name, alias, existing.version)
    return {"name": name, "version": str(existing.version), "run_id": existing.run_id,
            "model_uri": f"models:/{name}/{existing.version}", "onnx_sha256": onnx_sha, "reused": True}


def _version_tagged(client, name: str, tags: dict):
    """The newest version of ``name`` carrying all of ``tags``, or None."""
    from mlflow.exceptions import MlflowException

    query = " and ".join([f"name='{name}'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())])
    try:
        versions = client.search_model_versions(query)
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.version), default=None)


def _alias_version(client, name: str, alias: str) -> str:
    """The version ``alias`` points at ('' when unset)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return ""


def _same_version(client, name: str, onnx_sha: str, recipe_sha: str | None, extra: dict):
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    for mv in sorted(versions, key=lambda v: -int(v.version)):
        t = mv.tags or {}
        if (t.get(keys.TAG_ONNX_SHA256) == onnx_sha and t.get(keys.TAG_RECIPE_SHA256) == recipe_sha
                and all(t.get(str(k)) == str(v) for k, v in extra.items())):
            return mv
    return None


def _parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``NAME@ALIAS`` | ``NAME/VERSION`` | ``NAME`` -> (name, alias, version)."""
    m = re.fullmatch(r"(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>\d+))?", spec.strip())
    if not m:
        raise UserError(f"model {spec!r}: expected NAME, NAME@ALIAS or NAME/VERSION")
    return m["name"], m["alias"], m["version"]


def _resolve_version(client, spec: str):
    from mlflow.exceptions import MlflowException

    name, alias, version = _parse_spec(spec)
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version:
            return client.get_model_version(name, version)
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as err:
        raise UserError(f"model {spec!r}: not found in the registry ({redact(str(err))[:200]}); "
                        "`sparsepipe models list` shows what is there") from None
    if not versions:
        raise UserError(f"model {spec!r}: no registered versions; `sparsepipe models list` shows what is there")
    return max(versions, key=lambda v: int(v.version))


def pull_model(spec: str, out, tracking_uri: str | None = None) -> Path:
    """Write the deployment folder of ``spec`` (``NAME@ALIAS``, ``NAME/VERSION`` or ``NAME`` = latest) to ``out``.

    The folder is assembled next to ``out`` and renamed into place; ``out`` may be new, empty, or an earlier pull
    (it is replaced). ``model.onnx`` is checked against the version's ``onnx_sha256`` tag.
    """
    from mlflow.artifacts import download_artifacts

    out = Path(out).absolute()
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / SOURCE_FILE).is_file())):
        raise UserError(f"{out}: exists and is not an earlier `models pull` folder; choose a new or empty folder")
    uri, client = _client(tracking_uri)
    with http_limits(retries=3, timeout=300):
        mv = _resolve_version(client, spec)
        source = client.get_model_version_download_uri(mv.name, mv.version)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.pull-", dir=out.parent))
        try:
            local = Path(download_artifacts(artifact_uri=source, dst_path=str(tmp / "mlflow"), tracking_uri=uri))
            folder = tmp / "deploy"
            folder.mkdir()
            shutil.move(str(local / "model.onnx"), folder / "model.onnx")
            extra = local / "extra_files"  # recipe.yaml, data.yaml, model.pt, ... (and the original model.onnx
            if extra.is_dir():              # when the flavor's re-serialised copy was not byte-identical)
                for f in extra.iterdir():
                    if f.is_file():
                        os.replace(f, folder / f.name)
            sha = file_sha256(folder / "model.onnx")
            want = mv.tags.get(keys.TAG_ONNX_SHA256)
            if want and sha != want:
                raise UserError(f"model {spec!r}: downloaded model.onnx sha256 {sha[:12]}… differs from the "
                                f"registered {want[:12]}…; the stored artifact is corrupt")
            from sparse_core.safe_load import check_safe

            for pt in sorted(folder.glob("*.pt")):  # a registry file is data: never one that needs full unpickling
                check_safe(pt, f"model {spec!r}")
            (folder / SOURCE_FILE).write_text(json.dumps({
                "name": mv.name, "version": str(mv.version), "aliases": list(mv.aliases or []),
                "run_id": mv.run_id, "model_uri": f"models:/{mv.name}/{mv.version}", "onnx_sha256": sha,
                "tracking_uri": redact(uri), "tags": dict(mv.tags)}, indent=2) + "\n")
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.replace(out, old)
                os.replace(folder, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(folder, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _run_metrics(client, run_id: str | None) -> tuple[dict, dict]:
    if not run_id:
        return {}, {}
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - a deleted run: the version is listed without metrics
        return {}, {}
    return dict(run.data.metrics), dict(run.data.tags)


def list_models(tracking_uri: str | None = None) -> list[dict]:
    """One row per registered version: name, version, aliases, run_id, status, tags and the run's standard metrics."""
    _, client = _client(tracking_uri)
    rows = []
    with http_limits(retries=3, timeout=60):
        for rm in client.search_registered_models():
            aliases = rm.aliases or {}  # search_model_versions leaves ModelVersion.aliases empty
            for mv in client.search_model_versions(f"name='{rm.name}'"):
                metrics, _ = _run_metrics(client, mv.run_id)
                mine = sorted(a for a, v in aliases.items() if str(v) == str(mv.version))
                rows.append({"name": mv.name, "version": str(mv.version), "aliases": mine,
                             "run_id": mv.run_id, "status": mv.status, "tags": dict(mv.tags),
                             "metrics": {k: metrics[k] for k in keys.METRIC_KEYS if k in metrics}})
    return sorted(rows, key=lambda r: (r["name"], int(r["version"])))


_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_COND_RE = re.compile(r"^\s*(?P<metric>[\w./:\-]+)\s*(?P<op>>=|<=|==|>|<)\s*"
                      r"(?:(?P<factor>[0-9.eE+\-]+)\s*\*\s*)?(?P<ref>dense|[0-9.eE+\-]+)"
                      r"(?:\s*(?P<sign>[+\-])\s*(?P<delta>[0-9.eE]+))?\s*$")


def map_drop_constraint(max_map_drop: float, metric: str = "map50_95") -> str:
    """The accuracy budget against the dense model as a constraint: ``max_map_drop`` mAP points (1 point = 0.01)
    -> ``'map50_95>=dense-0.01'``."""
    if max_map_drop < 0:
        raise UserError(f"max_map_drop: {max_map_drop}; expected mAP points >= 0 (e.g. 1.0), or leave it unset")
    return f"{metric}>=dense-{max_map_drop / 100:g}"


def _parse_constraint(constraint: str) -> list[tuple[str, str, float, str, float]]:
    """``'map50>=0.9*dense, map50_95>=dense-0.01, size_mb<5'`` -> [(metric, op, factor, ref, offset)]; ref is
    'dense' or a number; the bound is ``factor * ref + offset``."""
    conds = []
    for part in re.split(r",|\band\b", constraint):
        if not part.strip():
            continue
        m = _COND_RE.match(part)
        if not m:
            raise UserError(f"constraint {part.strip()!r}: expected METRIC OP [FACTOR*]dense[-DELTA] or METRIC OP "
                            "NUMBER (OP one of >= <= > < ==), e.g. 'map50>=0.9*dense' or 'map50_95>=dense-0.01'")
        try:
            factor = float(m["factor"]) if m["factor"] else 1.0
            ref = m["ref"] if m["ref"] == "dense" else str(float(m["ref"]))
            offset = (-1 if m["sign"] == "-" else 1) * float(m["delta"]) if m["delta"] else 0.0
        except ValueError:
            raise UserError(f"constraint {part.strip()!r}: not a number") from None
        conds.append((m["metric"], m["op"], factor, ref, offset))
    return conds


def promote_champion(name: str, metric: str, higher_is_better: bool = True, constraint: str | None = None,
                     tracking_uri: str | None = None) -> dict:
    """Move alias ``champion`` to the version whose run has the best ``metric`` among those meeting ``constraint``.

    ``constraint`` like ``'map50>=0.9*dense'``: ``dense`` is that metric on the dense baseline, the version (or its
    run) tagged ``baseline=dense``, else the version with the lowest ``sparsity``. Ties go to the newer version.
    Returns ``{'name', 'version', 'run_id', 'metric', 'value', 'previous', 'eligible'}``.
    """
    from mlflow.exceptions import MlflowException

    _, client = _client(tracking_uri)
    conds = _parse_constraint(constraint) if constraint else []
    with http_limits(retries=3, timeout=60):
        try:
            versions = client.search_model_versions(f"name='{name}'")
        except MlflowException as err:
            raise UserError(f"model {name!r}: {redact(str(err))[:200]}") from None
        if not versions:
            raise UserError(f"model {name!r}: no registered versions")
        rows = []
        for mv in versions:
            metrics, run_tags = _run_metrics(client, mv.run_id)
            rows.append({"mv": mv, "metrics": metrics,
                         "dense": (mv.tags.get(keys.TAG_BASELINE) or run_tags.get(keys.TAG_BASELINE)) == "dense"})
        dense = None
        if any(ref == "dense" for _, _, _, ref, _ in conds):
            tagged = [r for r in rows if r["dense"]]
            with_sparsity = [r for r in rows if "sparsity" in r["metrics"]]
            dense = (max(tagged, key=lambda r: int(r["mv"].version)) if tagged else
                     min(with_sparsity, key=lambda r: (r["metrics"]["sparsity"], -int(r["mv"].version)))
                     if with_sparsity else None)
            if dense is None:
                raise UserError(f"model {name!r}: constraint uses 'dense' but no version is tagged baseline=dense "
                                "and none has a 'sparsity' metric")

        def ok(r) -> bool:
            for m, op, factor, ref, offset in conds:
                base = dense["metrics"].get(m) if ref == "dense" else float(ref)
                if base is None:
                    raise UserError(f"model {name!r}: dense baseline version {dense['mv'].version} has no {m!r} metric")
                if m not in r["metrics"] or not _OPS[op](r["metrics"][m], round(factor * base + offset, 12)):
                    return False
            return True

        eligible = [r for r in rows if metric in r["metrics"] and ok(r)]
        if not eligible:
            raise UserError(f"model {name!r}: no version has metric {metric!r}"
                            + (f" and meets {constraint!r}" if constraint else "") + "; champion left unchanged")
        sign = 1 if higher_is_better else -1
        best = max(eligible, key=lambda r: (sign * r["metrics"][metric], int(r["mv"].version)))
        try:
            previous = client.get_model_version_by_alias(name, CHAMPION).version
        except MlflowException:
            previous = None
        client.set_registered_model_alias(name, CHAMPION, best["mv"].version)
    return {"name": name, "version": str(best["mv"].version), "run_id": best["mv"].run_id, "metric": metric,
            "value": best["metrics"][metric], "previous": None if previous is None else str(previous),
            "eligible": sorted((str(r["mv"].version) for r in eligible), key=int)}
