"""`sparsepipe cluster check` against Kubernetes API responses served over real HTTP.

No live cluster was exercised: a local HTTP server answers the client's GETs from tests/fixtures/k8s (JSON in the
API's response shape), so the real `kubernetes` client code path runs (kubeconfig loading, HTTP, deserialization).
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sparse_core import cli
from pipelines.cluster import (MLFLOW_DB_SECRET, POSTGRES_SECRET, S3_SECRET, SECRET_KEYS, parse_pipeline_config)
from sparse_core.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "k8s"


class FakeApiServer:
    """Answers GET <path> from the first scenario folder holding <path>.json; else the API's 404 Status."""

    def __init__(self, *scenarios: str):
        self.dirs = [FIXTURES / s for s in scenarios]
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path+query, Authorization)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                outer.requests.append((self.command, self.path, self.headers.get("Authorization")))
                path = urlsplit(self.path).path.strip("/")
                status, body = 404, None
                if self.command == "GET":
                    for d in outer.dirs:
                        f = d / f"{path}.json"
                        if f.is_file():
                            body = json.loads(f.read_text())
                            status = body.get("code", 200) if body.get("kind") == "Status" else 200
                            break
                else:
                    status = 405
                if body is None:
                    name = path.rsplit("/", 1)[-1]
                    kind = path.rsplit("/", 2)[-2] if path.count("/") >= 2 else "unknown"
                    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": f'{kind} "{name}" not found', "reason": "NotFound",
                            "details": {"name": name, "kind": kind}, "code": status}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: fixture
  cluster:
    server: {server}
users:
- name: fixture-user
  user:
    token: fixture-token
contexts:
- name: fixture-ctx
  context:
    cluster: fixture
    user: fixture-user
current-context: fixture-ctx
""")
    return path


def run_check(capsys, tmp_path, *scenarios, extra=()):
    with FakeApiServer(*scenarios) as api:
        rc = cli.main(["cluster", "check", "--kubeconfig", str(kubeconfig(tmp_path, api.url)), "--json", *extra])
    out, err = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1])
    return rc, report, out + err, api.requests


def by_name(report, name, namespace):
    [check] = [c for c in report["checks"] if c["name"] == name and c["namespace"] == namespace]
    return check


def all_fixture_secret_values() -> set[str]:
    """The fake credentials in the Secret fixtures (plain and base64), e.g. fixture-secret-VALUE-must-not-print."""
    values = set()
    for f in FIXTURES.rglob("*.json"):
        body = json.loads(f.read_text())
        if body.get("kind") == "Secret":
            for v in body["data"].values():
                if "fixture-" in base64.b64decode(v).decode():
                    values |= {v, base64.b64decode(v).decode()}
    assert len(values) >= 6  # access key, secret key, DB URI, DB password; each plain and base64
    return values


def test_healthy_cluster_passes_every_check(capsys, tmp_path):
    rc, report, text, requests = run_check(capsys, tmp_path, "healthy")
    assert rc == 0 and report["ok"] is True and report["problems"] == 0
    assert report["context"] == "fixture-ctx" and report["server"].startswith("http://127.0.0.1:")
    names = {(c["name"], c["namespace"]) for c in report["checks"]}
    assert names == {
        ("namespace/sparsepipe", None), ("service/mlflow", "sparsepipe"),
        ("secret/sparsepipe-s3", "sparsepipe"), ("secret/sparsepipe-mlflow-db", "sparsepipe"),
        ("secret/sparsepipe-postgres", "sparsepipe"), ("namespace/kubeflow", None),
        ("serviceaccount/sparsepipe-runner", "kubeflow"), ("rolebinding/sparsepipe-runner", "kubeflow"),
        ("persistentvolumeclaim/sparsepipe-data", "kubeflow"), ("configmap/sparsepipe-pipeline-config", "kubeflow"),
        ("secret/sparsepipe-s3", "kubeflow"),
    }
    assert "1 ready endpoint" in by_name(report, "service/mlflow", "sparsepipe")["detail"]
    assert by_name(report, "namespace/sparsepipe", None)["detail"] == "pod-security enforce=restricted"
    # read-only, authenticated with the kubeconfig's token, and the endpoint lookup used the service label
    assert {m for m, _, _ in requests} == {"GET"}
    assert {auth for _, _, auth in requests} == {"Bearer fixture-token"}
    assert any("labelSelector=kubernetes.io%2Fservice-name%3Dmlflow" in p for _, p, _ in requests)
    for value in all_fixture_secret_values():
        assert value not in text


def test_fresh_cluster_lists_what_is_missing_and_how_to_create_it(capsys, tmp_path):
    rc, report, text, _ = run_check(capsys, tmp_path, "fresh")
    assert rc == 1 and report["ok"] is False
    failing = {(c["name"], c["namespace"]) for c in report["checks"] if not c["ok"]}
    assert failing == {
        ("namespace/sparsepipe", None), ("service/mlflow", "sparsepipe"),
        ("secret/sparsepipe-s3", "sparsepipe"), ("secret/sparsepipe-mlflow-db", "sparsepipe"),
        ("serviceaccount/sparsepipe-runner", "kubeflow"), ("rolebinding/sparsepipe-runner", "kubeflow"),
        ("persistentvolumeclaim/sparsepipe-data", "kubeflow"), ("configmap/sparsepipe-pipeline-config", "kubeflow"),
        ("secret/sparsepipe-s3", "kubeflow"),
    }
    assert report["problems"] == len(failing)
    assert by_name(report, "namespace/kubeflow", None)["ok"] is True
    assert "kubectl apply -k manifests/overlays/dev" in by_name(report, "namespace/sparsepipe", None)["fix"]
    fix = by_name(report, "secret/sparsepipe-s3", "kubeflow")["fix"]
    assert fix.startswith("kubectl -n kubeflow create secret generic sparsepipe-s3 --from-env-file=")
    assert "# keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: see manifests/secrets/sparsepipe-s3.example.env" in fix


def test_human_output_names_each_problem_with_its_fix(capsys, tmp_path):
    with FakeApiServer("fresh") as api:
        rc = cli.main(["cluster", "check", "--kubeconfig", str(kubeconfig(tmp_path, api.url))])
    out = capsys.readouterr().out
    assert rc == 1
    assert "PROBLEM  secret/sparsepipe-mlflow-db [sparsepipe]" in out
    assert "fix: kubectl -n sparsepipe create secret generic sparsepipe-mlflow-db" in out
    assert out.strip().splitlines()[-1] == "9 problem(s): fix them in the order listed"


def test_partial_cluster_reports_each_defect(capsys, tmp_path):
    rc, report, text, _ = run_check(capsys, tmp_path, "partial", "healthy")
    assert rc == 1
    s3 = by_name(report, "secret/sparsepipe-s3", "sparsepipe")
    assert not s3["ok"] and s3["detail"] == "missing or empty keys: AWS_SECRET_ACCESS_KEY"
    assert s3["fix"].startswith("kubectl -n sparsepipe create secret generic sparsepipe-s3 "
                                "--from-env-file=sparsepipe-s3.env --dry-run=client -o yaml | kubectl apply -f -")
    mlflow = by_name(report, "service/mlflow", "sparsepipe")
    assert not mlflow["ok"] and "no ready MLflow pod" in mlflow["detail"]
    pvc = by_name(report, "persistentvolumeclaim/sparsepipe-data", "kubeflow")
    assert pvc["ok"] and pvc["detail"].startswith("Pending, ReadWriteOnce")  # WaitForFirstConsumer is normal
    cm = by_name(report, "configmap/sparsepipe-pipeline-config", "kubeflow")
    assert not cm["ok"] and "SPARSEPIPE_GPU_TOLERATIONS: not JSON" in cm["detail"]
    assert not by_name(report, "secret/sparsepipe-s3", "kubeflow")["ok"]
    assert report["problems"] == 4
    for value in all_fixture_secret_values():
        assert value not in text


def test_forbidden_read_is_a_reported_problem_not_a_crash(capsys, tmp_path):
    rc, report, _, _ = run_check(capsys, tmp_path, "forbidden", "healthy")
    assert rc == 1 and report["problems"] == 1
    check = by_name(report, "secret/sparsepipe-s3", "kubeflow")
    assert check["detail"].startswith('forbidden: secrets "sparsepipe-s3" is forbidden')


def test_external_database_needs_no_postgres_secret(capsys, tmp_path):
    rc, report, _, _ = run_check(capsys, tmp_path, "external", "healthy")
    assert rc == 0
    check = by_name(report, "secret/sparsepipe-postgres", "sparsepipe")
    assert check["ok"] and "external database" in check["detail"]


def test_namespaces_are_options(capsys, tmp_path):
    rc, report, _, requests = run_check(capsys, tmp_path, "healthy",
                                        extra=["--namespace", "mlops", "--run-namespace", "team-a"])
    assert rc == 1 and report["namespace"] == "mlops" and report["run_namespace"] == "team-a"
    paths = {p.split("?")[0] for _, p, _ in requests}
    assert "/api/v1/namespaces/mlops/services/mlflow" in paths
    assert "/api/v1/namespaces/team-a/persistentvolumeclaims/sparsepipe-data" in paths
    assert not any("/namespaces/sparsepipe/" in p or "/namespaces/kubeflow/" in p for p in paths)


def test_unreachable_api_is_one_line_and_exit_2(capsys, tmp_path):
    with FakeApiServer("healthy") as api:
        url = api.url  # a port that was just free; nothing listens there after the server closes
    rc = cli.main(["cluster", "check", "--kubeconfig", str(kubeconfig(tmp_path, url))])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"sparsepipe cluster: error: cannot reach the Kubernetes API at {url}: ")
    assert "Connection refused" in err


def test_missing_kubeconfig_is_one_line_and_exit_2(capsys, tmp_path):
    rc = cli.main(["cluster", "check", "--kubeconfig", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "no usable Kubernetes config" in err and str(tmp_path / "nope") in err


def test_contract_names_match_the_manifests():
    """Names the check looks for are the ones the manifests create and the example env files document."""
    manifests = Path(__file__).parents[1] / "manifests"
    for name, keys in SECRET_KEYS.items():
        env = manifests / "secrets" / f"{name}.example.env"
        listed = [ln.split("=", 1)[0] for ln in env.read_text().splitlines() if ln and not ln.startswith("#")]
        assert listed == list(keys), name
    assert {S3_SECRET, MLFLOW_DB_SECRET, POSTGRES_SECRET} == set(SECRET_KEYS)


def test_pipeline_config_parses_prod_gpu_settings_and_rejects_bad_values():
    base = json.loads((FIXTURES / "healthy/api/v1/namespaces/kubeflow/configmaps/"
                       "sparsepipe-pipeline-config.json").read_text())["data"]
    cfg = parse_pipeline_config({**base, "SPARSEPIPE_GPU_COUNT": "1",
                                 "SPARSEPIPE_GPU_NODE_SELECTOR": '{"nvidia.com/gpu.present": "true"}',
                                 "SPARSEPIPE_GPU_TOLERATIONS":
                                     '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]'})
    assert cfg.gpu_count == 1 and cfg.gpu_node_selector == {"nvidia.com/gpu.present": "true"}
    assert cfg.gpu_tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert cfg.env["MLFLOW_TRACKING_URI"] == "http://mlflow.sparsepipe.svc.cluster.local:5000"
    assert cfg.service_account == "sparsepipe-runner" and cfg.data_pvc == "sparsepipe-data"
    bad = [({"SPARSEPIPE_GPU_COUNT": "-1"}, "SPARSEPIPE_GPU_COUNT: -1"),
           ({"SPARSEPIPE_GPU_COUNT": "one"}, "SPARSEPIPE_GPU_COUNT: 'one'"),
           ({"SPARSEPIPE_GPU_NODE_SELECTOR": "[]"}, "SPARSEPIPE_GPU_NODE_SELECTOR: a JSON list; expected a JSON dict"),
           ({"SPARSEPIPE_GPU_NODE_SELECTOR": '{"a": 1}'}, "values must be strings"),
           ({"SPARSEPIPE_GPU_TOLERATIONS": '[{"taint": "x"}]'}, "SPARSEPIPE_GPU_TOLERATIONS[0]"),
           ({"SPARSEPIPE_DATA_PVC": ""}, "SPARSEPIPE_DATA_PVC: missing")]
    for patch, message in bad:
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_pipeline_config({**base, **patch})
