"""Kubernetes settings for pipeline tasks (kfp-kubernetes): secrets and config as env, the data PVC, resources,
GPU scheduling, retries, timeouts, and caching.

Defaults match ``manifests/base/runner`` (Secret ``sparsepipe-s3``, ConfigMap ``sparsepipe-pipeline-config``, PVC
``sparsepipe-data``) and ``manifests/overlays/prod`` (GPU node selector + toleration). ``K8sSettings.from_env()`` reads
the same keys as that ConfigMap (``SPARSEPIPE_GPU_COUNT``, ``SPARSEPIPE_GPU_NODE_SELECTOR`` ...) so a cluster's
values can be exported into the shell that compiles.

Caching: KFP's own cache is turned off on every task. Its key is the literal inputs, which include the MLflow
parent run id (new every run: it would never hit) and, for ``data``/``recipe`` given as a path or ``s3://`` URI,
only the string (a changed data set behind the same URI would hit a stale entry). The steps cache by content
instead (``sparse_core.step_cache``: checkpoint sha256, data content hash, resolved recipe sha256), on the data
PVC (``SPARSEPIPE_STEP_CACHE``), so a changed recipe or data set can never reuse an old result.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

GPU_STEPS = ("sparse_train", "qat")
# step -> (cpu request, cpu limit, memory request, memory limit)
RESOURCES = {
    "open_run": ("100m", "500m", "256Mi", "1Gi"),
    "close_run": ("100m", "500m", "256Mi", "1Gi"),
    "fetch_checkpoint": ("250m", "1", "512Mi", "2Gi"),
    "prepare_dataset": ("1", "2", "2Gi", "4Gi"),
    "sparse_train": ("4", "8", "16Gi", "32Gi"),
    "qat": ("4", "8", "16Gi", "32Gi"),
    "export_model": ("1", "2", "4Gi", "8Gi"),
    "benchmark": ("2", "2", "2Gi", "4Gi"),  # request = limit: a throttled pod would report a wrong speed
    "register_model": ("250m", "1", "1Gi", "2Gi"),
    "select_champion": ("100m", "500m", "256Mi", "1Gi"),
    "analyze": ("2", "2", "4Gi", "8Gi"),  # request = limit: it times the model per engine, like benchmark
    "generate_recipe": ("100m", "500m", "256Mi", "1Gi"),
    # request = limit: both time models on the pod's CPUs (the probe before QAT, the candidates after export)
    "decide_precision": ("2", "2", "4Gi", "8Gi"),
    "choose_deployment": ("2", "2", "4Gi", "8Gi"),
}
TIMEOUTS = {"sparse_train": 48 * 3600, "qat": 24 * 3600}  # seconds; other steps: DEFAULT_TIMEOUT
DEFAULT_TIMEOUT = 2 * 3600
S3_ENV = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
MLFLOW_ENV = {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
              "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
              "MLFLOW_TRACKING_TOKEN": "MLFLOW_TRACKING_TOKEN"}
CONFIG_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")


@dataclass
class K8sSettings:
    """What compile/submit put into the IR's Kubernetes platform spec."""

    s3_secret: str = "sparsepipe-s3"  # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (S3 data, zoo, MLflow artifacts)
    mlflow_secret: str = "sparsepipe-mlflow"  # optional: MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN
    config_map: str = "sparsepipe-pipeline-config"  # MLflow URI, S3 endpoint, region (non-secret)
    data_pvc: str = "sparsepipe-data"
    data_mount: str = "/mnt/sparsepipe-data"
    gpus: int = 1  # per GPU step; 0 = CPU-only cluster (no GPU request, selector or toleration)
    gpu_resource: str = "nvidia.com/gpu"
    gpu_node_selector: dict = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: list = field(default_factory=lambda: [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    retries: int = 2  # transient failures: node loss, eviction, image pull, a store briefly down
    backoff: str = "60s"
    backoff_max: str = "900s"

    @classmethod
    def from_env(cls, env: dict | None = None) -> "K8sSettings":
        """Settings from ``SPARSEPIPE_*`` variables (the keys of the sparsepipe-pipeline-config ConfigMap)."""
        env = os.environ if env is None else env
        s = cls()
        if env.get("SPARSEPIPE_DATA_PVC"):
            s.data_pvc = env["SPARSEPIPE_DATA_PVC"]
        if env.get("SPARSEPIPE_DATA_MOUNT"):
            s.data_mount = env["SPARSEPIPE_DATA_MOUNT"]
        if env.get("SPARSEPIPE_GPU_COUNT"):
            s.gpus = int(env["SPARSEPIPE_GPU_COUNT"])
        if env.get("SPARSEPIPE_GPU_RESOURCE"):
            s.gpu_resource = env["SPARSEPIPE_GPU_RESOURCE"]
        if env.get("SPARSEPIPE_GPU_NODE_SELECTOR"):
            s.gpu_node_selector = json.loads(env["SPARSEPIPE_GPU_NODE_SELECTOR"])
        if env.get("SPARSEPIPE_GPU_TOLERATIONS"):
            s.gpu_tolerations = json.loads(env["SPARSEPIPE_GPU_TOLERATIONS"])
        return s


def configure(task, step: str, k8s: K8sSettings | None):
    """Apply sparsepipe's task settings: always caching off (the steps cache by content); on Kubernetes
    (``k8s`` given) env from Secrets/ConfigMap, the data PVC, resources, GPU scheduling, retries and a timeout.
    Local runs pass ``k8s=None``: those settings do nothing there but warn, and retries would re-run failures."""
    task.set_caching_options(enable_caching=False)
    task.set_display_name(step)
    if k8s is None:
        return task
    from kfp import kubernetes

    # manifests' NetworkPolicies let only pods with this label reach MLflow and S3
    from pipelines.cluster import STEP_POD_LABEL

    kubernetes.add_pod_label(task, *STEP_POD_LABEL)
    kubernetes.use_secret_as_env(task, k8s.s3_secret, S3_ENV)
    kubernetes.use_secret_as_env(task, k8s.mlflow_secret, MLFLOW_ENV, optional=True)
    kubernetes.use_config_map_as_env(task, k8s.config_map, {k: k for k in CONFIG_ENV}, optional=True)
    kubernetes.mount_pvc(task, k8s.data_pvc, k8s.data_mount)
    task.set_env_variable("SPARSEPIPE_STEP_CACHE", f"{k8s.data_mount}/step-cache")
    task.set_env_variable("SPARSEPIPE_CACHE", f"{k8s.data_mount}/zoo-cache")
    cpu_req, cpu_lim, mem_req, mem_lim = RESOURCES[step]
    task.set_cpu_request(cpu_req).set_cpu_limit(cpu_lim).set_memory_request(mem_req).set_memory_limit(mem_lim)
    if step in GPU_STEPS and k8s.gpus > 0:
        task.set_accelerator_type(k8s.gpu_resource).set_accelerator_limit(k8s.gpus)
        for key, value in k8s.gpu_node_selector.items():
            kubernetes.add_node_selector(task, key, str(value))
        for tol in k8s.gpu_tolerations:
            kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator"),
                                      value=tol.get("value"), effect=tol.get("effect"),
                                      toleration_seconds=tol.get("tolerationSeconds"))
    if k8s.retries > 0 and step not in ("close_run",):
        task.set_retry(num_retries=k8s.retries, backoff_duration=k8s.backoff, backoff_factor=2.0,
                       backoff_max_duration=k8s.backoff_max)
    kubernetes.set_timeout(task, TIMEOUTS.get(step, DEFAULT_TIMEOUT))
    return task
