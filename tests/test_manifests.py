"""Kubernetes manifests and the component image recipe, checked offline.

Each overlay is rendered with `kubectl kustomize`; every object is validated against the Kubernetes 1.31 JSON
schemas (kubernetes-validate, strict: unknown fields fail); every workload is held to the restricted Pod Security
Standard (implemented below from the PSS spec) plus our policy (read-only root, requests and limits, pinned
images, no secret values in manifests); NetworkPolicies are evaluated to the exact set of allowed flows.
The Dockerfile is linted with hadolint and its install steps compared with the Makefile's.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from sparse_core import __version__
from pipelines.cluster import (DATA_PVC, MLFLOW_SERVICE, PIPELINE_CONFIGMAP, RUN_NAMESPACE, SECRET_KEYS,
                                 SERVICE_ACCOUNT, STEP_POD_LABEL, parse_pipeline_config)

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ("dev", "prod", "prod-external")
K8S_VERSION = "1.31.0"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


def render(path: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(MANIFESTS / "overlays" / name) for name in OVERLAYS}


def find(objs, kind, name, namespace=None):
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name
            and (namespace is None or o["metadata"].get("namespace") == namespace)]
    assert len(hits) == 1, f"{kind}/{name} in {namespace}: {len(hits)} objects"
    return hits[0]


def pod_template(obj: dict) -> tuple[dict, dict]:
    """(pod metadata, pod spec) of any workload kind."""
    if obj["kind"] == "Pod":
        return obj["metadata"], obj["spec"]
    if obj["kind"] == "CronJob":
        tpl = obj["spec"]["jobTemplate"]["spec"]["template"]
    else:
        tpl = obj["spec"]["template"]
    return tpl.get("metadata", {}), tpl["spec"]


def workloads(objs):
    return [o for o in objs if o["kind"] in WORKLOAD_KINDS]


# --------------------------------------------------------------------------------------------------------------
# Restricted Pod Security Standard (baseline + restricted controls, Kubernetes v1.31) and our policy

BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                 "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def all_containers(spec):
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            yield key, c


def pss_restricted_violations(meta: dict, spec: dict) -> list[str]:
    """Every way this pod would be rejected by a namespace enforcing `restricted` (v1.31)."""
    v = []
    psc = spec.get("securityContext") or {}
    # baseline: host namespaces, HostProcess, hostPath, host ports, privileged, capabilities, AppArmor, SELinux,
    # /proc mount, seccomp, sysctls
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(f):
            v.append(f"{f}: true")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        v.append("pod windowsOptions.hostProcess")
    for vol in spec.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if "hostPath" in kinds:
            v.append(f"volume {vol['name']}: hostPath")
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            v.append(f"volume {vol['name']}: type {sorted(kinds - RESTRICTED_VOLUME_TYPES)} not allowed")
    for key, ann in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                ann == "runtime/default" or ann.startswith("localhost/")):
            v.append(f"annotation {key}={ann}")
    for sysctl in psc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            v.append(f"sysctl {sysctl['name']}")

    def selinux_ok(ctx):
        se = ctx.get("seLinuxOptions") or {}
        return se.get("type", "") in SELINUX_TYPES and not se.get("user") and not se.get("role")

    if not selinux_ok(psc):
        v.append("pod seLinuxOptions")
    if (psc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
        v.append("pod appArmorProfile")
    # restricted: pod-level defaults that containers may inherit
    pod_nonroot = psc.get("runAsNonRoot")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if psc.get("runAsUser") == 0:
        v.append("pod runAsUser: 0")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        v.append(f"pod seccompProfile {pod_seccomp}")
    for key, c in all_containers(spec):
        n = f"{key}/{c['name']}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            v.append(f"{n}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            v.append(f"{n}: windowsOptions.hostProcess")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                v.append(f"{n}: hostPort {p['hostPort']}")
        caps = sc.get("capabilities") or {}
        added = set(caps.get("add") or [])
        if not added <= BASELINE_CAPS:
            v.append(f"{n}: adds capabilities {sorted(added - BASELINE_CAPS)}")
        if not added <= {"NET_BIND_SERVICE"}:
            v.append(f"{n}: adds capabilities beyond NET_BIND_SERVICE")
        if "ALL" not in (caps.get("drop") or []):
            v.append(f"{n}: capabilities.drop lacks ALL")
        if sc.get("allowPrivilegeEscalation") is not False:
            v.append(f"{n}: allowPrivilegeEscalation is not false")
        if sc.get("procMount", "Default") != "Default":
            v.append(f"{n}: procMount {sc['procMount']}")
        if not selinux_ok(sc):
            v.append(f"{n}: seLinuxOptions")
        if (sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            v.append(f"{n}: appArmorProfile")
        nonroot = sc.get("runAsNonRoot", pod_nonroot)
        if nonroot is not True:
            v.append(f"{n}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            v.append(f"{n}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            v.append(f"{n}: seccompProfile {seccomp}")
    return v


IMAGE_RE = re.compile(r"^(?P<repo>[a-z0-9.\-/:]+?)(:(?P<tag>[\w][\w.\-]{0,127}))?(@sha256:(?P<digest>[0-9a-f]{64}))?$")
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|_URI$)", re.I)


def image_violations(image: str) -> list[str]:
    m = IMAGE_RE.match(image)
    if not m:
        return [f"image {image!r}: unparseable"]
    if not m["tag"] and not m["digest"]:
        return [f"image {image}: neither tag nor digest"]
    if m["tag"] and (m["tag"] == "latest" or m["tag"].startswith("latest-") or not re.search(r"\d", m["tag"])):
        return [f"image {image}: tag {m['tag']!r} is not a version"]
    return []


def policy_violations(meta: dict, spec: dict) -> list[str]:
    """Our policy on top of PSS: read-only root + writable /tmp, requests+limits, pinned images, no inline secrets."""
    v = []
    volumes = {vol["name"]: vol for vol in spec.get("volumes") or []}
    for key, c in all_containers(spec):
        n = f"{key}/{c['name']}"
        sc = c.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem") is not True:
            v.append(f"{n}: readOnlyRootFilesystem is not true")
        tmp = [m for m in c.get("volumeMounts") or [] if m["mountPath"] == "/tmp"]
        if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}) or tmp[0].get("readOnly"):
            v.append(f"{n}: no writable emptyDir at /tmp")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(kind) or {}):
                    v.append(f"{n}: no {kind}.{r}")
        v += [f"{n}: {msg}" for msg in image_violations(c.get("image", ""))]
        if c.get("imagePullPolicy") == "Never":
            v.append(f"{n}: imagePullPolicy Never")
        for e in c.get("env") or []:
            if "value" in e and SECRETISH.search(e["name"]):
                v.append(f"{n}: env {e['name']} has an inline value; expected valueFrom.secretKeyRef")
    return v


# --------------------------------------------------------------------------------------------------------------
# Rendering and schema validation

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_kubernetes_1_31(rendered, overlay):
    objs = rendered[overlay]
    assert len(objs) >= 15
    for obj in objs:
        # strict: unknown fields (typos such as `readOnlyRootFileSystem`) fail too; a missing schema raises
        assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True) == "1.31", obj["metadata"]["name"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") in ("sparsepipe", RUN_NAMESPACE), obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sparsepipe"


def test_schema_validation_rejects_a_broken_object(rendered):
    """The validator is not a rubber stamp: a misspelt field and a wrong type both fail."""
    dep = copy.deepcopy(find(rendered["dev"], "Deployment", "mlflow"))
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    dep = copy.deepcopy(find(rendered["dev"], "Deployment", "mlflow"))
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


# --------------------------------------------------------------------------------------------------------------
# Pod security and policy on every workload

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_meets_restricted_pss_and_policy(rendered, overlay):
    found = workloads(rendered[overlay])
    expected = {("Deployment", "mlflow")} | (set() if overlay == "prod-external" else
                                              {("StatefulSet", "postgres"), ("Deployment", "seaweedfs")})
    assert {(w["kind"], w["metadata"]["name"]) for w in found} == expected
    for w in found:
        meta, spec = pod_template(w)
        problems = pss_restricted_violations(meta, spec) + policy_violations(meta, spec)
        assert problems == [], f"{overlay} {w['kind']}/{w['metadata']['name']}: {problems}"
        # tracking pods never talk to the Kubernetes API: no token mounted
        assert spec["automountServiceAccountToken"] is False
        assert w["metadata"]["namespace"] == "sparsepipe"


def test_namespace_enforces_restricted(rendered):
    for overlay in OVERLAYS:
        ns = find(rendered[overlay], "Namespace", "sparsepipe")
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        # KFP's run namespace is KFP's: we never create or relabel it
        assert not [o for o in rendered[overlay] if o["kind"] == "Namespace" and o["metadata"]["name"] != "sparsepipe"]


BREAKAGES = {
    "privileged": (lambda s: s["containers"][0]["securityContext"].update(privileged=True), "privileged"),
    "escalation": (lambda s: s["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
                   "allowPrivilegeEscalation"),
    "root": (lambda s: s["containers"][0]["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
    "root-pod": (lambda s: (s["securityContext"].pop("runAsNonRoot"),
                            s["containers"][0]["securityContext"].pop("runAsNonRoot")), "runAsNonRoot"),
    "uid0": (lambda s: s["containers"][0]["securityContext"].update(runAsUser=0), "runAsUser 0"),
    "caps": (lambda s: s["containers"][0]["securityContext"].update(capabilities={"add": ["SYS_ADMIN"]}),
             "capabilities"),
    "seccomp": (lambda s: s["securityContext"].pop("seccompProfile"), "seccompProfile"),
    "hostpath": (lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    "hostnet": (lambda s: s.update(hostNetwork=True), "hostNetwork"),
    "hostport": (lambda s: s["containers"][0]["ports"][0].update(hostPort=5000), "hostPort"),
    "rootfs": (lambda s: s["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"), "readOnlyRoot"),
    "limits": (lambda s: s["containers"][0]["resources"].pop("limits"), "no limits.cpu"),
    "latest": (lambda s: s["containers"][0].update(image="ghcr.io/mlflow/mlflow:latest"), "not a version"),
    "untagged": (lambda s: s["containers"][0].update(image="postgres"), "neither tag nor digest"),
    "inline-secret": (lambda s: s["containers"][0]["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}),
                      "inline value"),
    "init-container": (lambda s: s.setdefault("initContainers", []).append(
        {"name": "init", "image": "busybox:1.37", "securityContext": {}}), "initContainers/init"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_policy_check_catches_each_violation(rendered, breakage):
    mutate, expected = BREAKAGES[breakage]
    meta, spec = pod_template(copy.deepcopy(find(rendered["dev"], "Deployment", "mlflow")))
    assert pss_restricted_violations(meta, spec) + policy_violations(meta, spec) == []
    mutate(spec)
    problems = pss_restricted_violations(meta, spec) + policy_violations(meta, spec)
    assert any(expected in p for p in problems), problems


def test_image_pins():
    assert image_violations("postgres:17.6-bookworm") == []
    assert image_violations("chrislusf/seaweedfs:4.48@sha256:" + "a" * 64) == []
    assert image_violations("ghcr.io/mlflow/mlflow@sha256:" + "b" * 64) == []
    for bad in ("postgres", "postgres:latest", "ghcr.io/mlflow/mlflow:latest-full", "python:slim"):
        assert image_violations(bad), bad


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_in_manifests(rendered, overlay):
    objs = rendered[overlay]
    assert not [o for o in objs if o["kind"] == "Secret"], "Secrets are created with kubectl, never rendered"
    text = json.dumps(objs)
    # no credentials inside URIs, no key-looking literals
    assert not re.search(r"\w+://[^/\s\"]+:[^@/\s\"]+@", text)
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    # every Secret reference is to a documented secret and key
    for w in workloads(objs):
        for _, c in all_containers(pod_template(w)[1]):
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in SECRET_KEYS[ref["name"]], ref
            assert not c.get("envFrom"), "explicit env only: every variable's source is visible"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_references_resolve(rendered, overlay):
    objs = rendered[overlay]
    for w in workloads(objs):
        ns = w["metadata"]["namespace"]
        for _, c in all_containers(pod_template(w)[1]):
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in find(objs, "ConfigMap", ref["name"], ns)["data"], ref
            # $(VAR) in args must name a variable the container defines
            defined = {e["name"] for e in c.get("env") or []}
            for arg in c.get("args") or []:
                for var in re.findall(r"\$\((\w+)\)", arg):
                    assert var in defined, (c["name"], arg)


# --------------------------------------------------------------------------------------------------------------
# What each overlay promises

def test_dev_is_single_replica_and_small(rendered):
    objs = rendered["dev"]
    for w in workloads(objs):
        assert w["spec"].get("replicas", 1) == 1
        for _, c in all_containers(pod_template(w)[1]):
            assert c["resources"]["limits"]["memory"] in ("512Mi", "1Gi")
    assert not [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    assert "--workers=1" in find(objs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("overlay", ("prod", "prod-external"))
def test_prod_has_ha_mlflow_with_pdb_and_gpu_pool(rendered, overlay):
    objs = rendered[overlay]
    dep = find(objs, "Deployment", "mlflow", "sparsepipe")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    pdb = find(objs, "PodDisruptionBudget", "mlflow", "sparsepipe")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert 1 <= pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]
    cfg = parse_pipeline_config(find(objs, "ConfigMap", PIPELINE_CONFIGMAP, RUN_NAMESPACE)["data"])
    assert cfg.gpu_count == 1 and cfg.gpu_resource == "nvidia.com/gpu"
    assert cfg.gpu_node_selector == {"nvidia.com/gpu.present": "true"}
    assert cfg.gpu_tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert find(objs, "PersistentVolumeClaim", DATA_PVC, RUN_NAMESPACE)["spec"]["accessModes"] == ["ReadWriteMany"]


def test_prod_external_uses_external_stores(rendered):
    objs = rendered["prod-external"]
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert not {n for n in names if n[1] in ("postgres", "seaweedfs", "seaweedfs-data")}
    cfg = find(objs, "ConfigMap", "mlflow-config", "sparsepipe")["data"]
    assert cfg["MLFLOW_S3_ENDPOINT_URL"].startswith("https://")
    assert "svc.cluster.local" not in json.dumps(find(objs, "ConfigMap", PIPELINE_CONFIGMAP, RUN_NAMESPACE)["data"]
                                                   ["AWS_ENDPOINT_URL_S3"])
    # the dev/prod in-cluster objects are all still there in plain prod
    prod = {(o["kind"], o["metadata"]["name"]) for o in rendered["prod"]}
    in_cluster = {("StatefulSet", "postgres"), ("Deployment", "seaweedfs"), ("PersistentVolumeClaim", "seaweedfs-data")}
    assert in_cluster <= prod


def test_mlflow_server_command(rendered):
    for overlay in OVERLAYS:
        objs = rendered[overlay]
        c = find(objs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
        assert c["command"] == ["mlflow", "server"]
        args = c["args"]
        for flag in ("--serve-artifacts", "--host=0.0.0.0", "--port=5000",
                     "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)",
                     "--allowed-hosts=$(MLFLOW_ALLOWED_HOSTS)"):
            assert flag in args
        assert not any("backend-store-uri" in a for a in args)  # read from env: keeps the password out of argv
        env = {e["name"]: e for e in c["env"]}
        assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "sparsepipe-mlflow-db"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert c[probe]["httpGet"]["path"] == "/health"
        hosts = find(objs, "ConfigMap", "mlflow-config", "sparsepipe")["data"]["MLFLOW_ALLOWED_HOSTS"].split(",")
        assert "*" not in hosts and "mlflow.sparsepipe.svc.cluster.local:5000" in hosts and "localhost:*" in hosts
        tracking_uri = find(objs, "ConfigMap", PIPELINE_CONFIGMAP, RUN_NAMESPACE)["data"]["MLFLOW_TRACKING_URI"]
        assert tracking_uri.split("//", 1)[1] in hosts  # the Host header steps send is accepted
        assert c["image"].startswith("ghcr.io/mlflow/mlflow:v") and c["image"].endswith("-full")


def test_runner_rbac_is_least_privilege(rendered):
    objs = rendered["prod"]
    role = find(objs, "Role", SERVICE_ACCOUNT, RUN_NAMESPACE)
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r.get("resourceNames", ())), tuple(r["verbs"]))
             for r in role["rules"]}
    assert rules == {
        (("",), ("configmaps",), ("kfp-launcher",), ("get",)),
        (("",), ("secrets",), ("mlpipeline-minio-artifact",), ("get",)),
        (("",), ("pods",), (), ("get", "list", "watch")),
        (("argoproj.io",), ("workflowtaskresults",), (), ("create", "patch")),
    }
    assert not [r for r in role["rules"] if "*" in r["verbs"] or "*" in r["resources"]]
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    rb = find(objs, "RoleBinding", SERVICE_ACCOUNT, RUN_NAMESPACE)
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SERVICE_ACCOUNT}
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": RUN_NAMESPACE}]
    assert find(objs, "Service", MLFLOW_SERVICE, "sparsepipe")["spec"]["ports"][0]["port"] == 5000


# --------------------------------------------------------------------------------------------------------------
# NetworkPolicies evaluated: who may open a connection to whom

PODS = {  # name -> (namespace, labels)
    "step": (RUN_NAMESPACE, {STEP_POD_LABEL[0]: STEP_POD_LABEL[1]}),
    "kfp-api": (RUN_NAMESPACE, {"app": "ml-pipeline"}),
    "mlflow": ("sparsepipe", {"app.kubernetes.io/name": "mlflow"}),
    "postgres": ("sparsepipe", {"app.kubernetes.io/name": "postgres"}),
    "seaweedfs": ("sparsepipe", {"app.kubernetes.io/name": "seaweedfs"}),
    "intruder": ("sparsepipe", {"app": "debug-shell"}),
    "elsewhere": ("default", {"app": "web"}),
}
PORTS = (5000, 5432, 8333, 9333, 8888, 8080)


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "evaluator handles matchLabels only"
    return (selector.get("matchLabels") or {}).items() <= labels.items()


def _peer_matches(peer: dict, policy_ns: str, pod: str) -> bool:
    ns, labels = PODS[pod]
    if "ipBlock" in peer:
        return False  # pod-to-pod flows only; ipBlocks are for addresses outside the cluster
    if "namespaceSelector" in peer:
        ns_ok = _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": ns})
    else:
        ns_ok = ns == policy_ns
    return ns_ok and _selects(peer.get("podSelector", {}), labels)


def _allowed(policies, pod: str, direction: str, other: str, port: int) -> bool:
    ns, labels = PODS[pod]
    kind, rules_key, peers_key = (("Ingress", "ingress", "from") if direction == "in" else ("Egress", "egress", "to"))
    selecting = [p for p in policies if p["metadata"]["namespace"] == ns and kind in p["spec"]["policyTypes"]
                 and _selects(p["spec"]["podSelector"], labels)]
    if not selecting:
        return True  # not isolated in this direction
    for p in selecting:
        for rule in p["spec"].get(rules_key) or []:
            port_ok = not rule.get("ports") or any(r.get("port") == port and r.get("protocol", "TCP") == "TCP"
                                                     for r in rule["ports"])
            peer_ok = not rule.get(peers_key) or any(_peer_matches(peer, ns, other) for peer in rule[peers_key])
            if port_ok and peer_ok:
                return True
    return False


def allowed_flows(objs) -> set[tuple[str, str, int]]:
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    present = {o["metadata"]["name"] for o in workloads(objs)} | {"step", "kfp-api", "intruder", "elsewhere"}
    return {(src, dst, port) for src in PODS for dst in PODS for port in PORTS
            if src != dst and src in present and dst in present
            and dst in ("mlflow", "postgres", "seaweedfs")  # our servers; what else listens is not ours
            and _allowed(policies, src, "out", dst, port) and _allowed(policies, dst, "in", src, port)}


def test_network_policies_allow_exactly_the_needed_flows(rendered):
    for overlay in ("dev", "prod"):
        assert allowed_flows(rendered[overlay]) == {
            ("step", "mlflow", 5000), ("step", "seaweedfs", 8333),
            ("mlflow", "postgres", 5432), ("mlflow", "seaweedfs", 8333),
        }, overlay
    assert allowed_flows(rendered["prod-external"]) == {("step", "mlflow", 5000)}


def test_network_policies_default_deny_and_dns(rendered):
    for overlay in OVERLAYS:
        objs = rendered[overlay]
        deny = find(objs, "NetworkPolicy", "default-deny-all", "sparsepipe")["spec"]
        assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        dns = find(objs, "NetworkPolicy", "allow-dns-egress", "sparsepipe")["spec"]
        assert {p["port"] for p in dns["egress"][0]["ports"]} == {53}
        steps = find(objs, "NetworkPolicy", "sparsepipe-pipeline-steps", RUN_NAMESPACE)["spec"]
        assert steps["podSelector"] == {"matchLabels": {STEP_POD_LABEL[0]: STEP_POD_LABEL[1]}}
        assert steps["ingress"] == []


# --------------------------------------------------------------------------------------------------------------
# The component image recipe

DOCKERFILE = MANIFESTS / "Dockerfile"


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    res = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # the lint is real: an unpinned base image fails it
    bad = DOCKERFILE.read_text().replace("FROM python:3.11.14-slim-bookworm", "FROM python")
    res = subprocess.run([hadolint, "--no-color", "-"], input=bad, capture_output=True, text=True)
    assert res.returncode != 0 and "DL3006" in res.stdout


def test_dockerfile_variants_pins_and_user():
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM (\S+)(?: AS (\S+))?", text, re.M)
    bases = {alias: image for image, alias in froms if alias}
    assert set(bases) == {"base-cpu", "base-cuda"}
    assert bases["base-cpu"].startswith("python:3.11.") and bases["base-cpu"].endswith("-slim-bookworm")
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+", bases["base-cuda"])
    for image in bases.values():
        assert image_violations(image) == []
    assert froms[-1] == ("base-${VARIANT}", "") and "ARG VARIANT=cpu" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert text.index("USER 10001") > text.rindex("RUN ")  # nothing runs as root after the switch
    assert "HOME=/home/sparsepipe" in text and "YOLO_OFFLINE=1" in text


def test_image_and_makefile_install_with_the_same_script():
    """One source of truth: the Makefile's install recipe and the Dockerfile both run scripts/install.sh."""
    docker_runs = re.findall(r"^RUN .*scripts/install\.sh.*$", DOCKERFILE.read_text(), re.M)
    assert docker_runs == ["RUN sh scripts/install.sh /opt/venv/bin/python",
                           "RUN sh scripts/install.sh /opt/venv/bin/python . \\"]
    assert "pip install" not in DOCKERFILE.read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "sh scripts/install.sh $(BIN)/python -e '.[dev]'" in makefile
    assert "pip install" not in makefile
    script = (ROOT / "scripts" / "install.sh").read_text()
    pins = dict(re.findall(r"(torch|torchvision)==([\d.]+)", script))
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {f"{k}=={v}" for k, v in pins.items()} <= set(deps)


def test_install_script_runs_the_documented_commands(tmp_path):
    """Run scripts/install.sh with a stand-in interpreter that records its argv (no download)."""
    fake = tmp_path / "python"
    log = tmp_path / "calls"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PIP_FLAGS": "-q", "TORCH_INDEX_URL": "https://wheels.invalid/cpu"}
    subprocess.run(["sh", str(ROOT / "scripts" / "install.sh"), str(fake), "."], check=True, env=env)
    assert log.read_text().splitlines() == [
        "-m pip install -q --index-url https://wheels.invalid/cpu torch==2.14.1 torchvision==0.29.1",
        "-m pip install -q .",
    ]
    log.unlink()
    subprocess.run(["sh", str(ROOT / "scripts" / "install.sh"), str(fake)], check=True, env={"PATH": "/usr/bin:/bin"})
    assert log.read_text().splitlines() == ["-m pip install torch==2.14.1 torchvision==0.29.1"]


def test_docker_context_builds_the_package(tmp_path):
    """The files the Dockerfile copies (and .dockerignore lets through) are enough to build the wheel it installs."""
    text = DOCKERFILE.read_text()
    sources = [s for line in re.findall(r"^COPY (.+)$", text, re.M) for s in line.split()[:-1]]
    allowed = [ln[1:].rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.startswith("!")]
    ctx = tmp_path / "ctx"
    for src in sources:
        assert src.rstrip("/") in allowed, f"{src} is copied but .dockerignore excludes it"
        target = ctx / src
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / src, target)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(ctx)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("sparsepipe-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "pipelines/cluster.py" in names and "sparse_core/image.py" in names and "sparse_core/cli/__init__.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_component_image_reference_comes_from_one_place(monkeypatch):
    from sparse_core import image

    assert image.component_image() == f"ghcr.io/sparsepipe/sparsepipe:{__version__}-cpu"
    assert image.component_image("cuda") == f"ghcr.io/sparsepipe/sparsepipe:{__version__}-cuda"
    monkeypatch.setenv("SPARSEPIPE_IMAGE", "registry.example/sp@sha256:" + "c" * 64)
    assert image.component_image() == "registry.example/sp@sha256:" + "c" * 64
    assert image.component_image("cuda").endswith("-cuda")
    with pytest.raises(ValueError, match="variant 'rocm'"):
        image.component_image("rocm")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version == __version__
    assert "0.1.0-cpu" in (MANIFESTS / "Dockerfile").read_text().replace(__version__, "0.1.0")


def test_deploy_docs_match_the_manifests():
    """docs/deploy.md's commands name paths, secrets and services that exist."""
    doc = (ROOT / "docs" / "deploy.md").read_text()
    steps = re.findall(r"^(\d+)\. \*\*", doc, re.M)
    assert steps == [str(i) for i in range(1, len(steps) + 1)] and len(steps) >= 8
    readme = (MANIFESTS / "README.md").read_text()
    paths = set(re.findall(r"(?<![\w/])(manifests/[\w./-]+[\w/])", doc + readme))
    paths |= {"manifests/" + p for p in re.findall(r"`((?:overlays|components|base|secrets)/[\w./-]+[\w/])`", readme)}
    assert len(paths) >= 6
    for path in paths:
        assert (ROOT / path).exists(), path
    assert "kubectl apply -k manifests/overlays/dev" in doc
    assert "cluster-scoped-resources?ref=$PIPELINE_VERSION" in doc  # KFP from its own manifests, not vendored
    for name in SECRET_KEYS:
        assert f"{name}.env" in doc
    assert "kubectl -n kubeflow create secret generic sparsepipe-s3" in doc
    assert "sparsepipe cluster check" in doc
    assert "sparsepipe pipeline submit sparse_transfer --host http://localhost:8080" in doc
    assert "port-forward svc/mlflow 5000:5000" in doc and "http://localhost:5000" in doc
    for param in ("model", "zoo", "data", "data_format", "recipe", "imgsz", "batch", "mlflow_uri", "experiment",
                  "register_name"):
        assert re.search(rf"--param '?{param}=", doc), param


def test_pipeline_compiler_settings_match_the_manifests(rendered):
    """pipelines/k8s.py (what compile/submit put in the IR) names the objects the manifests create."""
    from pipelines import k8s

    for overlay in OVERLAYS:
        objs = rendered[overlay]
        cfg = find(objs, "ConfigMap", k8s.K8sSettings().config_map, RUN_NAMESPACE)["data"]
        assert set(k8s.CONFIG_ENV) <= set(cfg), overlay
        settings = k8s.K8sSettings.from_env(cfg)
        assert settings.data_pvc == DATA_PVC and find(objs, "PersistentVolumeClaim", settings.data_pvc, RUN_NAMESPACE)
        assert settings.data_mount == parse_pipeline_config(cfg).data_mount
        assert settings.s3_secret in SECRET_KEYS and set(k8s.S3_ENV.values()) == set(SECRET_KEYS[settings.s3_secret])
        assert settings.gpus == (0 if overlay == "dev" else 1)
    prod = k8s.K8sSettings.from_env(find(rendered["prod"], "ConfigMap", PIPELINE_CONFIGMAP, RUN_NAMESPACE)["data"])
    assert prod.gpu_node_selector == {"nvidia.com/gpu.present": "true"} and prod.gpu_tolerations
