"""The three pipelines compile to KFP v2 IR with the expected DAG and Kubernetes settings (parsed, no snapshots);
``pipeline submit`` fails clearly on an unreachable host and sends a request that matches the KFP v2beta1 API.

What cannot be exercised here (no cluster): that a real KFP backend accepts and schedules the run, that the
Secret/ConfigMap/PVC exist, that pods land on the GPU pool. The request is checked against the API models that
``kfp_server_api`` (generated from KFP's v2beta1 OpenAPI spec) ships, and against the compiled pipeline's own
input definitions, which is what the backend validates parameters against.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from pipelines import PIPELINES, build, compile_pipeline
from pipelines.cluster import STEP_POD_LABEL
from pipelines.k8s import GPU_STEPS, RESOURCES, K8sSettings
from pipelines.params import parse_params
from pipelines.submit import submit
from sparse_core.image import component_image

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["fetch_checkpoint", "prepare_dataset", "sparse_train", "qat", "export_model", "benchmark", "register_model"]


def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparse_core.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


class IR:
    """A compiled pipeline: tasks by display name (any DAG depth), executors, Kubernetes platform settings."""

    def __init__(self, path: Path):
        docs = list(yaml.safe_load_all(path.read_text()))
        self.spec = docs[0]
        self.platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
        self.tasks: dict[str, dict] = {}  # display name -> task (+ '_dag' parent component, '_key' task key)
        self._walk(self.spec["root"]["dag"]["tasks"], "root")

    def _walk(self, tasks: dict, dag: str) -> None:
        for key, task in tasks.items():
            name = task["taskInfo"]["name"]
            self.tasks[name] = {**task, "_dag": dag, "_key": key}
            comp = self.spec["components"][task["componentRef"]["name"]]
            if "dag" in comp:
                self._walk(comp["dag"]["tasks"], task["componentRef"]["name"])

    def executor(self, name: str) -> dict:
        comp = self.spec["components"][self.tasks[name]["componentRef"]["name"]]
        return comp["executorLabel"], self.spec["deploymentSpec"]["executors"][comp["executorLabel"]]["container"]

    def k8s(self, name: str) -> dict:
        label, _ = self.executor(name)
        return self.platform.get(label, {})

    def deps(self, name: str) -> set[str]:
        """Display names of the tasks ``name`` depends on (same DAG)."""
        task = self.tasks[name]
        keys = set(task.get("dependentTasks", []))
        return {n for n, t in self.tasks.items() if t["_key"] in keys and t["_dag"] == task["_dag"]}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, IR]:
    out = tmp_path_factory.mktemp("ir")
    return {name: IR(compile_pipeline(name, out / f"{name}.yaml", K8sSettings()))
            for name in PIPELINES}  # every pipeline the CLI offers compiles with Kubernetes settings


def test_sparse_transfer_dag(compiled):
    ir = compiled["sparse_transfer"]
    assert set(STEPS) | {"open_run", "close_run"} <= set(ir.tasks)
    # decide_precision (will INT8 pay on the target?) sits before qat, choose_deployment (the fastest form within
    # the accuracy gate) after export; what is registered is the chosen deployment
    chain = ["open_run", "fetch_checkpoint", "prepare_dataset", "sparse_train", "decide_precision", "qat",
             "export_model", "choose_deployment", "benchmark", "register_model"]
    assert ir.deps("sparse_train") >= {"fetch_checkpoint", "prepare_dataset"}
    for before, after in zip(chain[3:], chain[4:]):
        assert before in ir.deps(after), (before, after)
    assert "benchmark" in ir.deps("register_model") and "choose_deployment" in ir.deps("register_model")
    assert "sparse_train" in ir.deps("choose_deployment")  # the float model is a candidate too
    for step in [*STEPS, "decide_precision", "choose_deployment"]:  # every step logs under the parent run
        assert "open_run" in ir.deps(step)
    # close_run is the exit handler: it runs after the steps' group whatever its outcome
    close = ir.tasks["close_run"]
    assert close["_dag"] == "root" and close.get("triggerPolicy", {}).get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert close["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"] == ir.tasks["fetch_checkpoint"]["_dag"].removeprefix("comp-")
    params = ir.spec["root"]["inputDefinitions"]["parameters"]
    for name in ("model", "zoo", "data", "data_format", "recipe", "recipe_args", "imgsz", "batch", "mlflow_uri",
                 "experiment", "register_name", "epochs"):
        assert name in params, name
    assert params["imgsz"]["parameterType"] == "NUMBER_INTEGER" and params["recipe_args"]["parameterType"] == "STRING"


def test_from_scratch_has_optional_teacher(compiled):
    ir = compiled["sparsify_from_scratch"]
    assert "fetch_teacher" in ir.tasks and "fetch_teacher" in ir.deps("sparse_train")
    assert "teacher" in ir.spec["root"]["inputDefinitions"]["parameters"]
    assert ir.spec["root"]["inputDefinitions"]["parameters"]["teacher"]["defaultValue"] == ""
    assert "fetch_teacher" in ir.deps("qat")


def test_sweep_parallel_for_and_champion(compiled):
    ir = compiled["sparsity_sweep"]
    loop = next(t for t in ir.tasks.values() if "parameterIterator" in t)
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("sparsities")
    in_loop = {n for n, t in ir.tasks.items() if t["_dag"] == loop["componentRef"]["name"]}
    assert in_loop == {"sparse_train", "qat", "export_model", "benchmark", "register_model"}
    assert ir.tasks["sparse_train"]["inputs"]["parameters"]["sparsity_target"]["componentInputParameter"].startswith(
        "pipelinechannel--sparsities-loop-item")
    for step in in_loop:  # on a cluster the loop's steps log under the parent run open_run returns
        assert ir.tasks[step]["inputs"]["parameters"]["parent_run_id"]["componentInputParameter"] == \
            "pipelinechannel--open-run-Output"
    assert {"dense_baseline", "dense_export", "dense_benchmark", "dense_register"} <= set(ir.tasks)
    champ = ir.tasks["select_champion"]
    assert ir.deps("select_champion") >= {"dense_register", loop["taskInfo"]["name"]}
    fan_in = champ["inputs"]["parameters"]["candidates"]["taskOutputParameter"]
    assert fan_in["producerTask"] == loop["_key"]  # dsl.Collected: the loop's register outputs as a list
    assert ir.spec["root"]["inputDefinitions"]["parameters"]["sparsities"]["parameterType"] == "LIST"


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_images_resources_secrets_gpu_retries(compiled, name):
    ir = compiled[name]
    settings = K8sSettings()
    for display, task in ir.tasks.items():
        if "componentRef" not in task or "dag" in ir.spec["components"][task["componentRef"]["name"]]:
            continue  # a group (exit handler, loop), not a step
        step = display if display in RESOURCES else {"fetch_teacher": "fetch_checkpoint", "dense_baseline":
                                                     "sparse_train", "dense_export": "export_model",
                                                     "dense_benchmark": "benchmark",
                                                     "dense_register": "register_model"}[display]
        _, container = ir.executor(display)
        want_image = component_image("cuda" if step in GPU_STEPS else "cpu")
        assert container["image"] == want_image and ":" in want_image and not want_image.endswith(":latest")
        assert "pip install" not in " ".join(container["command"])  # the image carries sparsepipe and kfp
        cpu_req, cpu_lim, mem_req, mem_lim = RESOURCES[step]
        res = container["resources"]
        assert (res["resourceCpuRequest"], res["resourceCpuLimit"]) == (cpu_req, cpu_lim)
        assert (res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == (mem_req, mem_lim)
        k8s = ir.k8s(display)
        secrets = {s["secretName"]: s for s in k8s["secretAsEnv"]}
        s3_env = {m["envVar"] for m in secrets[settings.s3_secret]["keyToEnv"]}
        assert s3_env == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} and not secrets[settings.s3_secret]["optional"]
        assert {m["envVar"] for m in secrets[settings.mlflow_secret]["keyToEnv"]} >= {"MLFLOW_TRACKING_USERNAME",
                                                                                     "MLFLOW_TRACKING_PASSWORD"}
        assert {m["envVar"] for m in k8s["configMapAsEnv"][0]["keyToEnv"]} >= {"MLFLOW_TRACKING_URI",
                                                                             "AWS_ENDPOINT_URL_S3"}
        assert not any(e["name"].startswith(("AWS_SECRET", "MLFLOW_TRACKING_PASSWORD")) for e in container.get("env", []))
        assert k8s["pvcMount"][0]["mountPath"] == settings.data_mount
        # the manifests' NetworkPolicies only let pods with this label reach MLflow and S3
        assert k8s["podMetadata"]["labels"] == {"sparsepipe.io/pipeline-step": "true"} == dict([STEP_POD_LABEL])
        assert k8s["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == settings.data_pvc
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert env["SPARSEPIPE_STEP_CACHE"].startswith(settings.data_mount)
        if step in GPU_STEPS:
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "1"
            assert k8s["nodeSelector"]["labels"] == settings.gpu_node_selector
            assert k8s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        else:
            assert "accelerator" not in res and "nodeSelector" not in k8s and "tolerations" not in k8s
        assert int(k8s["activeDeadlineSeconds"]) > 0
        # KFP's literal-input cache is off; the steps cache by content (see pipelines/k8s.py)
        assert not task.get("cachingOptions", {}).get("enableCache", False)
        if step != "close_run":
            assert task["retryPolicy"]["maxRetryCount"] == settings.retries


def test_cpu_only_cluster_has_no_gpu_settings(tmp_path):
    s = K8sSettings()
    s.gpus = 0
    ir = IR(compile_pipeline("sparse_transfer", tmp_path / "cpu.yaml", s))
    _, container = ir.executor("sparse_train")
    assert "accelerator" not in container["resources"] and "nodeSelector" not in ir.k8s("sparse_train")


def test_cli_compile_and_bad_input(tmp_path):
    out = tmp_path / "st.yaml"
    r = cli("pipeline", "compile", "sparse_transfer", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert IR(out).tasks.keys() >= set(STEPS)
    r = cli("pipeline", "compile", "sparsity_sweep", "--out", str(tmp_path / "sw.yaml"), "--gpus", "0", "--json")
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last == {"pipeline": "sparsity_sweep", "out": str(tmp_path / "sw.yaml"), "kubernetes": True, "gpus": 0}
    assert "select_champion" in IR(tmp_path / "sw.yaml").tasks
    r = cli("pipeline", "compile", "nope", "--out", str(tmp_path / "x.yaml"))
    assert r.returncode == 2 and "unknown; expected one of sparse_transfer" in r.stderr and "Traceback" not in r.stderr
    r = cli("pipeline", "run", "sparse_transfer", "--local", "--param", "imgsz=big", "--param", "model=m",
            "--param", "data=d", "--param", "recipe=r")
    assert r.returncode == 2 and "--param imgsz=big: expected an integer" in r.stderr
    r = cli("pipeline", "run", "sparse_transfer", "--local", "--param", "model=m")
    assert r.returncode == 2 and "missing --param data=..., --param recipe=..." in r.stderr


def test_submit_unreachable_host_is_a_clear_error():
    t0 = time.monotonic()
    r = cli("pipeline", "submit", "sparse_transfer", "--host", "http://127.0.0.1:9", "--param", "model=zoo:a/b",
            "--param", "data=s3://bucket/data", "--param", "recipe=zoo:a/b")
    assert r.returncode == 2, r.stderr
    assert "KFP API not reachable" in r.stderr and "http://127.0.0.1:9" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 60


class _RecordingKFP(BaseHTTPRequestHandler):
    """Answers the calls kfp.Client makes for create_run_from_pipeline_package and records them."""

    requests: list = []

    def _reply(self, obj, code=200):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.requests.append({"method": "GET", "path": self.path})
        if self.path.startswith("/apis/v2beta1/healthz"):
            return self._reply({"multi_user": False})
        if self.path.startswith("/apis/v2beta1/experiments"):
            return self._reply({})  # none yet: the client creates it
        self._reply({"error": "not found"}, 404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests.append({"method": "POST", "path": self.path, "body": json.loads(body),
                              "content_type": self.headers.get("Content-Type")})
        if self.path == "/apis/v2beta1/experiments":
            return self._reply({"experiment_id": "exp-7", "display_name": json.loads(body)["display_name"]})
        if self.path == "/apis/v2beta1/runs":
            return self._reply({"run_id": "run-42", "display_name": json.loads(body)["display_name"],
                                "state": "PENDING"})
        self._reply({"error": "not found"}, 404)

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_api():
    _RecordingKFP.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingKFP)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _RecordingKFP.requests
    server.shutdown()


JSON_TYPES = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": (int, float), "BOOLEAN": bool,
              "LIST": list, "STRUCT": dict}


def test_submit_request_matches_kfp_v2beta1_create_run(kfp_api, tmp_path):
    import kfp_server_api
    from kfp_server_api.models import V2beta1Run, V2beta1RuntimeConfig

    host, requests = kfp_api
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("version: 1.1.0\nmodifiers:\n  - !EpochRangeModifier\n    start_epoch: 0\n    end_epoch: 3\n")
    settings = K8sSettings()
    func = build("sparsity_sweep", settings)
    params = parse_params(func, ["model=zoo:cv/detection/yolov8-n/pytorch/ultralytics/coco/base-none",
                                 "data=s3://datasets/shapes", f"recipe={recipe}", "imgsz=320",
                                 "sparsities=[0.5, 0.7, 0.9]", "mlflow_uri=http://mlflow.sparsepipe:5000"])
    result = submit("sparsity_sweep", host, params, experiment="team-a", service_account="sparsepipe-runner",
                    k8s=settings)
    assert result["run_id"] == "run-42" and result["url"] == f"{host}/#/runs/details/run-42"

    creates = [r for r in requests if r["method"] == "POST" and r["path"] == "/apis/v2beta1/runs"]
    assert len(creates) == 1 and creates[0]["content_type"].startswith("application/json")
    body = creates[0]["body"]
    # only fields of the v2beta1 Run message, none of the server-set (output-only) ones
    allowed = set(V2beta1Run.attribute_map.values())
    assert set(body) <= allowed, set(body) - allowed
    assert not set(body) & {"run_id", "state", "created_at", "finished_at", "run_details", "state_history", "error"}
    assert ("pipeline_spec" in body) != ("pipeline_version_reference" in body)
    assert body["experiment_id"] == "exp-7" and body["service_account"] == "sparsepipe-runner"
    assert body["display_name"].startswith("sparsity_sweep-")
    assert set(body["runtime_config"]) <= set(V2beta1RuntimeConfig.attribute_map.values())
    # the generated client can read it back as a V2beta1Run (types per the OpenAPI spec)
    api = kfp_server_api.ApiClient()
    run = api._ApiClient__deserialize(body, "V2beta1Run")
    assert run.runtime_config.parameters["imgsz"] == 320

    # pipeline_spec: the IR (plus the Kubernetes platform spec), and parameters that fit its input definitions
    spec = body["pipeline_spec"]["pipeline_spec"]
    assert spec["schemaVersion"].startswith("2.") and spec["pipelineInfo"]["name"] == "sparsity-sweep"
    assert "exec-sparse-train" in body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"][
        "deploymentSpec"]["executors"]
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    given = body["runtime_config"]["parameters"]
    assert set(given) <= set(inputs)
    for name, value in given.items():
        assert isinstance(value, JSON_TYPES[inputs[name]["parameterType"]]), (name, value)
    required = {n for n, d in inputs.items() if "defaultValue" not in d and not d.get("isOptional")}
    assert required <= set(given)
    assert given["sparsities"] == [0.5, 0.7, 0.9]
    assert given["recipe"] == recipe.read_text()  # a local recipe file travels inline: pods cannot read it
    # the experiment was looked up by name, then created
    assert any(r["method"] == "POST" and r["path"] == "/apis/v2beta1/experiments"
               and r["body"]["display_name"] == "team-a" for r in requests)


def test_sparse_core_never_imports_kfp_or_pipelines():
    """The library stays free of KFP: the pipeline CLI, demo and cluster check live in pipelines/."""
    import re

    pattern = re.compile(r"^\s*(import (kfp|pipelines)\b|from (kfp|pipelines)\b)", re.M)
    hits = [str(p.relative_to(ROOT)) for p in (ROOT / "sparse_core").rglob("*.py") if pattern.search(p.read_text())]
    assert hits == []
    # and the console script still offers the commands that moved
    for args in (["pipeline", "--help"], ["cluster", "check", "--help"], ["pipeline", "compile", "--help"]):
        r = cli(*args)
        assert r.returncode == 0 and "usage: sparsepipe" in r.stdout, r.stderr
