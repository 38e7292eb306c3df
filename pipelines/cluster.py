"""What a cluster must hold for sparsepipe runs, and ``sparsepipe cluster check`` that verifies it.

The names below are the contract between ``manifests/`` (which creates these objects), the pipeline compiler
(which mounts them into step pods) and the check. Two namespaces: the tracking stack (MLflow, PostgreSQL,
SeaweedFS) lives in ``sparsepipe``; KFP starts run pods in its own namespace (``kubeflow`` for standalone KFP), so
the runner's service account, data PVC, pipeline config and S3 secret live there.

The ``kubernetes`` client is imported inside functions: importing this module for its names stays cheap. It lives
beside the pipelines (not in ``sparse_core``): it is about running them on Kubernetes.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from sparse_core.errors import UserError

NAMESPACE = "sparsepipe"
RUN_NAMESPACE = "kubeflow"
SERVICE_ACCOUNT = "sparsepipe-runner"
DATA_PVC = "sparsepipe-data"
PIPELINE_CONFIGMAP = "sparsepipe-pipeline-config"
MLFLOW_SERVICE = "mlflow"
MLFLOW_PORT = 5000
POSTGRES_STATEFULSET = "postgres"
# Step pods carry this label; NetworkPolicies let only them reach MLflow and S3.
STEP_POD_LABEL = ("sparsepipe.io/pipeline-step", "true")
# Secret name -> keys its consumers read (manifests/secrets/<name>.example.env lists the same keys).
S3_SECRET = "sparsepipe-s3"
MLFLOW_DB_SECRET = "sparsepipe-mlflow-db"
POSTGRES_SECRET = "sparsepipe-postgres"
SECRET_KEYS: dict[str, tuple[str, ...]] = {
    S3_SECRET: ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    MLFLOW_DB_SECRET: ("MLFLOW_BACKEND_STORE_URI",),
    POSTGRES_SECRET: ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"),
}
PSS_LABEL = "pod-security.kubernetes.io/enforce"
REQUEST_TIMEOUT = (5, 15)  # connect, read seconds: a check must answer quickly or say why not


# ---------------------------------------------------------------------------------------------------------------
# Pipeline config (ConfigMap sparsepipe-pipeline-config)

@dataclass(frozen=True)
class PipelineConfig:
    """Cluster settings the pipeline compiler applies to step pods."""

    env: dict[str, str]                       # plain (non-secret) env for every step: MLflow URI, S3 endpoint, ...
    data_pvc: str
    data_mount: str
    service_account: str
    gpu_count: int                            # per GPU step; 0 = train on CPU
    gpu_resource: str
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    gpu_tolerations: list[dict[str, Any]] = field(default_factory=list)


# what pipelines/k8s.py maps into every step (boto3 reads AWS_ENDPOINT_URL_S3 for S3 clients)
_ENV_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")
_TOLERATION_FIELDS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def parse_pipeline_config(data: Mapping[str, str], source: str = PIPELINE_CONFIGMAP) -> PipelineConfig:
    """Validate the ConfigMap's ``data``; raise UserError naming the bad key."""

    def need(key: str) -> str:
        value = data.get(key)
        if value is None or not str(value).strip():
            raise UserError(f"{source}: {key}: missing; expected it in configmap/{PIPELINE_CONFIGMAP} "
                            f"(manifests/base/runner/pipeline-config.yaml)")
        return str(value).strip()

    def as_json(key: str, kind: type) -> Any:
        try:
            value = json.loads(need(key))
        except json.JSONDecodeError as err:
            raise UserError(f"{source}: {key}: not JSON ({err.msg}); expected a JSON {kind.__name__}") from None
        if not isinstance(value, kind):
            raise UserError(f"{source}: {key}: a JSON {type(value).__name__}; expected a JSON {kind.__name__}")
        return value

    selector = as_json("SPARSEPIPE_GPU_NODE_SELECTOR", dict)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
        raise UserError(f"{source}: SPARSEPIPE_GPU_NODE_SELECTOR: values must be strings; expected "
                        '{"label": "value"}')
    tolerations = as_json("SPARSEPIPE_GPU_TOLERATIONS", list)
    for i, tol in enumerate(tolerations):
        if not isinstance(tol, dict) or not set(tol) <= _TOLERATION_FIELDS:
            raise UserError(f"{source}: SPARSEPIPE_GPU_TOLERATIONS[{i}]: {tol!r}; expected an object with fields "
                            f"from {sorted(_TOLERATION_FIELDS)}")
    try:
        gpu_count = int(need("SPARSEPIPE_GPU_COUNT"))
    except ValueError:
        raise UserError(f"{source}: SPARSEPIPE_GPU_COUNT: {data['SPARSEPIPE_GPU_COUNT']!r}; "
                        "expected a whole number >= 0") from None
    if gpu_count < 0:
        raise UserError(f"{source}: SPARSEPIPE_GPU_COUNT: {gpu_count}; expected a whole number >= 0")
    return PipelineConfig(
        env={k: str(data[k]) for k in _ENV_KEYS if data.get(k)},
        data_pvc=need("SPARSEPIPE_DATA_PVC"),
        data_mount=need("SPARSEPIPE_DATA_MOUNT"),
        service_account=need("SPARSEPIPE_SERVICE_ACCOUNT"),
        gpu_count=gpu_count,
        gpu_resource=need("SPARSEPIPE_GPU_RESOURCE"),
        gpu_node_selector=selector,
        gpu_tolerations=tolerations,
    )


def read_pipeline_config(run_namespace: str = RUN_NAMESPACE, kubeconfig: str | None = None,
                         context: str | None = None) -> PipelineConfig:
    """Fetch and validate the pipeline config from the cluster (for compile/submit)."""
    from kubernetes import client

    api = _connect(kubeconfig, context)
    cm = _call(api, lambda: client.CoreV1Api(api).read_namespaced_config_map(
        PIPELINE_CONFIGMAP, run_namespace, _request_timeout=REQUEST_TIMEOUT))
    if cm is None:
        raise UserError(f"configmap/{PIPELINE_CONFIGMAP} in namespace {run_namespace}: not found; "
                        f"expected it from `kubectl apply -k manifests/overlays/<env>`")
    return parse_pipeline_config(cm.data or {}, source=f"{run_namespace}/configmap/{PIPELINE_CONFIGMAP}")


# ---------------------------------------------------------------------------------------------------------------
# Talking to the API

def _server_of(api) -> str:
    return api.configuration.host


def _connect(kubeconfig: str | None, context: str | None):
    """An ApiClient from a kubeconfig (or in-cluster config), with no retries: failures surface at once."""
    from kubernetes import client, config

    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
    try:
        if kubeconfig or os.path.exists(path) or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
        else:
            config.load_incluster_config(client_configuration=cfg)
    except (config.ConfigException, OSError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: no usable Kubernetes config ({detail}); expected a kubeconfig "
                        "(--kubeconfig, $KUBECONFIG or ~/.kube/config) with a current context") from None
    cfg.retries = 0
    return client.ApiClient(cfg)


def _call(api, fn: Callable[[], Any]) -> Any:
    """Run one API request: the object, ``None`` for 404, ``PermissionError`` for 403; else one-line UserError."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    try:
        return fn()
    except ApiException as err:
        if err.status == 404:
            return None
        if err.status == 403:
            return PermissionError(_api_message(err))
        if err.status == 401:
            raise UserError(f"Kubernetes API at {_server_of(api)}: 401 Unauthorized; expected valid credentials "
                            "in the kubeconfig (kubectl auth whoami)") from None
        raise UserError(f"Kubernetes API at {_server_of(api)}: HTTP {err.status} {err.reason}: "
                        f"{_api_message(err)}") from None
    except (urllib3.exceptions.HTTPError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise UserError(f"cannot reach the Kubernetes API at {_server_of(api)}: {_one_line(reason)}; "
                        "expected a running cluster (check `kubectl config current-context`)") from None


def _api_message(err) -> str:
    try:
        return json.loads(err.body).get("message") or err.reason
    except (TypeError, ValueError, AttributeError):
        return str(err.reason)


def _one_line(obj: Any) -> str:
    text = str(obj)
    # urllib3 wraps the socket error text in its object repr: keep the human part
    if "]" in text and "Errno" in text:
        text = text[text.index("[Errno"):]
    return " ".join(text.split())[:300]


# ---------------------------------------------------------------------------------------------------------------
# The check

@dataclass
class Check:
    name: str                 # e.g. "secret/sparsepipe-s3"
    namespace: str | None
    ok: bool
    detail: str
    fix: str = ""


def _apply_hint() -> str:
    return "kubectl apply -k manifests/overlays/dev   (or overlays/prod, overlays/prod-external)"


def _secret_hint(name: str, namespace: str, replace: bool = False) -> str:
    """A copy-pasteable command; ``replace`` rewrites an existing Secret in place."""
    cmd = f"kubectl -n {namespace} create secret generic {name} --from-env-file={name}.env"
    if replace:
        cmd += " --dry-run=client -o yaml | kubectl apply -f -"
    return f"{cmd}   # keys {', '.join(SECRET_KEYS[name])}: see manifests/secrets/{name}.example.env"


class _Probe:
    """The API clients of one check run and the checks found so far."""

    def __init__(self, api):
        from kubernetes import client

        self.api = api
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.checks: list[Check] = []

    def get(self, fn):
        return _call(self.api, fn)

    def add(self, name: str, namespace: str | None, ok: bool, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, namespace, ok, detail, fix))

    def forbidden(self, name: str, namespace: str | None, obj) -> bool:
        """True (and a failed check recorded) when reading ``obj`` was refused."""
        if isinstance(obj, PermissionError):
            self.add(name, namespace, False, f"forbidden: {obj}",
                     "ask for read access to it (kubectl auth can-i get ...)")
            return True
        return False


def run_checks(api, namespace: str = NAMESPACE, run_namespace: str = RUN_NAMESPACE) -> list[Check]:
    """Every check, in the order a person would fix them. Reads objects; prints nothing; never reads secret values."""
    p = _Probe(api)
    _check_tracking_namespace(p, namespace)
    _check_mlflow_service(p, namespace)
    _check_tracking_secrets(p, namespace)
    _check_run_namespace(p, run_namespace)
    _check_runner_account(p, run_namespace)
    _check_data_pvc(p, run_namespace)
    _check_pipeline_config(p, run_namespace)
    _check_secret(p, S3_SECRET, run_namespace)
    return p.checks


def _check_tracking_namespace(p: _Probe, namespace: str) -> None:
    """The tracking namespace exists and enforces the restricted Pod Security level."""
    ns_obj = p.get(lambda: p.core.read_namespace(namespace, _request_timeout=REQUEST_TIMEOUT))
    if p.forbidden(f"namespace/{namespace}", None, ns_obj):
        return
    if ns_obj is None:
        p.add(f"namespace/{namespace}", None, False, "not found", _apply_hint())
        return
    level = (ns_obj.metadata.labels or {}).get(PSS_LABEL)
    p.add(f"namespace/{namespace}", None, level == "restricted", f"pod-security enforce={level or 'unset'}",
          "" if level == "restricted" else f"kubectl label namespace {namespace} {PSS_LABEL}=restricted --overwrite")


def _ready_endpoints(p: _Probe, namespace: str) -> int | None:
    """Ready endpoints behind the MLflow service; None when they cannot be read."""
    slices = p.get(lambda: p.discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={MLFLOW_SERVICE}", _request_timeout=REQUEST_TIMEOUT))
    if isinstance(slices, PermissionError) or slices is None:
        return None
    return sum(1 for s in slices.items for e in (s.endpoints or [])
               if e.conditions is None or e.conditions.ready is not False)


def _check_mlflow_service(p: _Probe, namespace: str) -> None:
    """The MLflow service exists on its port with at least one ready pod behind it."""
    name = f"service/{MLFLOW_SERVICE}"
    svc = p.get(lambda: p.core.read_namespaced_service(MLFLOW_SERVICE, namespace, _request_timeout=REQUEST_TIMEOUT))
    if p.forbidden(name, namespace, svc):
        return
    if svc is None:
        p.add(name, namespace, False, "not found", _apply_hint())
        return
    ports = [port.port for port in (svc.spec.ports or [])]
    ready = _ready_endpoints(p, namespace)
    if MLFLOW_PORT not in ports:
        p.add(name, namespace, False, f"ports {ports}; expected {MLFLOW_PORT}", _apply_hint())
    elif ready == 0:
        p.add(name, namespace, False, "no ready MLflow pod behind it",
              f"kubectl -n {namespace} rollout status deployment/mlflow; "
              f"kubectl -n {namespace} logs deployment/mlflow")
    else:
        p.add(name, namespace, True, f"port {MLFLOW_PORT}" + ("" if ready is None else f", {ready} ready endpoint(s)"))


def _check_tracking_secrets(p: _Probe, namespace: str) -> None:
    """Secrets of the tracking stack; postgres' own only when PostgreSQL runs in the cluster."""
    sts = p.get(lambda: p.apps.read_namespaced_stateful_set(POSTGRES_STATEFULSET, namespace,
                                                            _request_timeout=REQUEST_TIMEOUT))
    wanted = [S3_SECRET, MLFLOW_DB_SECRET]
    if sts is not None and not isinstance(sts, PermissionError):
        wanted.append(POSTGRES_SECRET)
    for secret in wanted:
        _check_secret(p, secret, namespace)
    if POSTGRES_SECRET not in wanted:
        p.add(f"secret/{POSTGRES_SECRET}", namespace, True,
              f"not needed: no statefulset/{POSTGRES_STATEFULSET} (external database)")


def _check_run_namespace(p: _Probe, run_namespace: str) -> None:
    """KFP's run namespace exists (standalone KFP creates ``kubeflow``)."""
    run_ns = p.get(lambda: p.core.read_namespace(run_namespace, _request_timeout=REQUEST_TIMEOUT))
    if p.forbidden(f"namespace/{run_namespace}", None, run_ns):
        return
    p.add(f"namespace/{run_namespace}", None, run_ns is not None,
          "KFP run namespace" if run_ns is not None else "not found",
          "" if run_ns is not None else
          "install Kubeflow Pipelines first (docs/deploy.md, step 1), or pass --run-namespace")


def _check_runner_account(p: _Probe, run_namespace: str) -> None:
    """The runner service account, and a role binding that binds it."""
    t = REQUEST_TIMEOUT
    sa = p.get(lambda: p.core.read_namespaced_service_account(SERVICE_ACCOUNT, run_namespace, _request_timeout=t))
    if not p.forbidden(f"serviceaccount/{SERVICE_ACCOUNT}", run_namespace, sa):
        p.add(f"serviceaccount/{SERVICE_ACCOUNT}", run_namespace, sa is not None,
              "present" if sa is not None else "not found", "" if sa is not None else _apply_hint())
    rb = p.get(lambda: p.rbac.read_namespaced_role_binding(SERVICE_ACCOUNT, run_namespace, _request_timeout=t))
    if p.forbidden(f"rolebinding/{SERVICE_ACCOUNT}", run_namespace, rb):
        return
    bound = rb is not None and any(s.kind == "ServiceAccount" and s.name == SERVICE_ACCOUNT
                                   for s in (rb.subjects or []))
    p.add(f"rolebinding/{SERVICE_ACCOUNT}", run_namespace, bound,
          "binds the runner service account" if bound else
          ("not found" if rb is None else f"does not bind serviceaccount/{SERVICE_ACCOUNT}"),
          "" if bound else _apply_hint())


def _check_data_pvc(p: _Probe, run_namespace: str) -> None:
    """The data PVC is bound (or pending until its first consumer, for WaitForFirstConsumer classes)."""
    name = f"persistentvolumeclaim/{DATA_PVC}"
    pvc = p.get(lambda: p.core.read_namespaced_persistent_volume_claim(DATA_PVC, run_namespace,
                                                                       _request_timeout=REQUEST_TIMEOUT))
    if p.forbidden(name, run_namespace, pvc):
        return
    if pvc is None:
        p.add(name, run_namespace, False, "not found", _apply_hint())
        return
    phase = (pvc.status.phase if pvc.status else None) or "Unknown"
    modes = ",".join(pvc.spec.access_modes or [])
    ok = phase in ("Bound", "Pending")
    detail = f"{phase}, {modes}" + (" (binds when the first step mounts it, if its storage class waits "
                                      "for a consumer)" if phase == "Pending" else "")
    p.add(name, run_namespace, ok, detail, "" if ok else f"kubectl -n {run_namespace} describe pvc {DATA_PVC}")


def _check_pipeline_config(p: _Probe, run_namespace: str) -> None:
    """The pipeline ConfigMap exists and parses (``parse_pipeline_config``)."""
    name = f"configmap/{PIPELINE_CONFIGMAP}"
    cm = p.get(lambda: p.core.read_namespaced_config_map(PIPELINE_CONFIGMAP, run_namespace,
                                                         _request_timeout=REQUEST_TIMEOUT))
    if p.forbidden(name, run_namespace, cm):
        return
    if cm is None:
        p.add(name, run_namespace, False, "not found", _apply_hint())
        return
    try:
        pc = parse_pipeline_config(cm.data or {}, source=f"{run_namespace}/configmap/{PIPELINE_CONFIGMAP}")
    except UserError as err:
        p.add(name, run_namespace, False, str(err), f"kubectl -n {run_namespace} edit configmap {PIPELINE_CONFIGMAP}")
        return
    gpu = (f"{pc.gpu_count} x {pc.gpu_resource} per GPU step, node selector {pc.gpu_node_selector}"
           if pc.gpu_count else "GPU steps run on CPU (SPARSEPIPE_GPU_COUNT=0)")
    p.add(name, run_namespace, True, gpu)


def _check_secret(p: _Probe, name: str, namespace: str) -> None:
    """Present with every key non-empty. Only key names are looked at; values are never printed or returned."""
    obj = p.get(lambda: p.core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT))
    if p.forbidden(f"secret/{name}", namespace, obj):
        return
    if obj is None:
        p.add(f"secret/{name}", namespace, False, "not found", _secret_hint(name, namespace))
        return
    data = obj.data or {}
    missing = [k for k in SECRET_KEYS[name] if not data.get(k)]
    if missing:
        p.add(f"secret/{name}", namespace, False, f"missing or empty keys: {', '.join(missing)}",
              _secret_hint(name, namespace, replace=True))
    else:
        p.add(f"secret/{name}", namespace, True, f"keys {', '.join(SECRET_KEYS[name])}")


def _context_name(kubeconfig: str | None, context: str | None) -> str:
    if context:
        return context
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        return active["name"]
    except Exception:  # in-cluster config has no context; the name is only informative
        return "in-cluster"


def _cmd_check(args: argparse.Namespace) -> int:
    api = _connect(args.kubeconfig, args.context)
    checks = run_checks(api, args.namespace, args.run_namespace)
    problems = [c for c in checks if not c.ok]
    server = _server_of(api)
    if args.json:
        print(json.dumps({"ok": not problems, "server": server, "context": _context_name(args.kubeconfig, args.context),
                          "namespace": args.namespace, "run_namespace": args.run_namespace,
                          "problems": len(problems), "checks": [asdict(c) for c in checks]}))
    else:
        print(f"sparsepipe cluster check: {server} (namespaces {args.namespace}, {args.run_namespace})")
        labels = [c.name + (f" [{c.namespace}]" if c.namespace else "") for c in checks]
        width = max(map(len, labels))
        for c, label in zip(checks, labels):
            print(f"  {'ok     ' if c.ok else 'PROBLEM'}  {label:<{width}}  {c.detail}")
            if c.fix:
                print(f"           fix: {c.fix}")
        print("all checks passed" if not problems else f"{len(problems)} problem(s): fix them in the order listed")
    return 0 if not problems else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("cluster", help="check that a Kubernetes cluster is ready for sparsepipe runs",
                              description="Kubernetes readiness for sparsepipe pipeline runs.")
    sub = p.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    c = sub.add_parser("check", help="verify namespace, secrets, service account, PVC and MLflow service exist",
                       description="Reads (never changes) the cluster; prints each missing object and how to "
                                   "create it. Exit 0: ready; 1: something is missing; 2: cluster unreachable.")
    c.add_argument("--namespace", default=NAMESPACE, help=f"tracking stack namespace (default {NAMESPACE})")
    c.add_argument("--run-namespace", default=RUN_NAMESPACE,
                   help=f"namespace KFP runs pipeline pods in (default {RUN_NAMESPACE}, standalone KFP)")
    c.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG, ~/.kube/config, or in-cluster)")
    c.add_argument("--context", help="kubeconfig context (default: the current one)")
    c.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    c.set_defaults(func=_cmd_check)
