"""Proof that the local control plane is the real thing, not a fake.

Each test exercises behaviour a mock API server would not have: controllers that turn
a Deployment into Running pods, a scheduler that honours extended resources and taints,
RBAC that refuses, and CRD schema validation done by the server.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from tests.testkit import KubectlRunner

pytestmark = pytest.mark.cluster


def test_two_simulated_nodes_are_ready(kubectl: KubectlRunner) -> None:
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert {"kwok-cpu-0", "kwok-gpu-0"} <= set(by_name)
    for node in by_name.values():
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert [c["status"] for c in ready] == ["True"], node["metadata"]["name"]
    assert by_name["kwok-gpu-0"]["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in by_name["kwok-cpu-0"]["status"]["allocatable"]


def test_server_reports_pinned_version(kubectl: KubectlRunner) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.32.")
    assert version["serverVersion"]["minor"] == "32"


def test_deployment_becomes_available_with_running_pods(
    kubectl: KubectlRunner, namespace: str
) -> None:
    manifest = textwrap.dedent(
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          replicas: 2
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec:
              containers:
                - name: web
                  image: registry.invalid/web:1
                  resources: {requests: {cpu: 100m, memory: 64Mi}}
        """
    )
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    kubectl("wait", "-n", namespace, "--for=condition=Available", "deployment/web", "--timeout=90s")
    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"].startswith("kwok-")


def test_gpu_pod_lands_on_gpu_node(kubectl: KubectlRunner, namespace: str) -> None:
    manifest = textwrap.dedent(
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: trainer}
        spec:
          tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
          containers:
            - name: main
              image: registry.invalid/cuda:1
              resources: {limits: {nvidia.com/gpu: "1"}}
        """
    )
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "pod/trainer", "--timeout=90s")
    node = kubectl("get", "pod", "-n", namespace, "trainer", "-o", "jsonpath={.spec.nodeName}")
    assert node.stdout == "kwok-gpu-0"


def test_gpu_pod_beyond_capacity_stays_pending(kubectl: KubectlRunner, namespace: str) -> None:
    manifest = textwrap.dedent(
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: greedy}
        spec:
          tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
          containers:
            - name: main
              image: registry.invalid/cuda:1
              resources: {limits: {nvidia.com/gpu: "8"}}
        """
    )
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    deadline = time.monotonic() + 120  # only ends the wait; a loaded CI machine is slow
    reason = ""
    while time.monotonic() < deadline:
        pod = json.loads(kubectl("get", "pod", "-n", namespace, "greedy", "-o", "json").stdout)
        conds = {c["type"]: c for c in pod["status"].get("conditions", [])}
        if "PodScheduled" in conds:
            reason = conds["PodScheduled"].get("message", "")
            break
        time.sleep(0.5)
    assert pod["status"]["phase"] == "Pending"
    assert "nvidia.com/gpu" in reason


def _token_kubeconfig(admin: str, token: str, directory: Path) -> str:
    config = yaml.safe_load(Path(admin).read_text())
    cluster = config["clusters"][0]
    path = directory / "token.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}],
                "current-context": "sa",
            }
        )
    )
    return str(path)


def test_service_account_without_permissions_is_refused(
    kubectl: KubectlRunner, kubeconfig: str, namespace: str, tmp_path: Path
) -> None:
    kubectl("create", "serviceaccount", "-n", namespace, "nobody")
    token = kubectl("create", "token", "-n", namespace, "nobody").stdout.strip()
    # A kubeconfig with only the token: the admin kubeconfig's client certificate
    # would otherwise authenticate the request as the admin.
    as_nobody = _token_kubeconfig(kubeconfig, token, tmp_path)

    def run_as_nobody() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", as_nobody, "get", "pods", "-n", namespace],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    denied = run_as_nobody()
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    assert "cannot list resource" in denied.stderr
    # The same identity is allowed once a Role grants it, so the 403 came from RBAC.
    kubectl("create", "role", "-n", namespace, "pod-reader", "--verb=list", "--resource=pods")
    kubectl(
        "create",
        "rolebinding",
        "-n",
        namespace,
        "pod-reader",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:nobody",
    )
    deadline = time.monotonic() + 60  # only ends the wait; a loaded CI machine is slow
    while True:
        allowed = run_as_nobody()
        if allowed.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert allowed.returncode == 0, allowed.stderr


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.proof.kascade.io}
spec:
  group: proof.kascade.io
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {type: integer, minimum: 1, maximum: 10}
"""


def test_crd_schema_violation_is_rejected_with_field_named(
    kubectl: KubectlRunner, namespace: str
) -> None:
    kubectl("apply", "-f", "-", input=CRD)
    kubectl("wait", "--for=condition=Established", "crd/widgets.proof.kascade.io", "--timeout=30s")
    bad = "apiVersion: proof.kascade.io/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: 42}\n"
    rejected = kubectl("apply", "-n", namespace, "-f", "-", input=bad, check=False)
    assert rejected.returncode != 0
    assert "spec.size" in rejected.stderr
    assert "less than or equal to 10" in rejected.stderr
    good = bad.replace("42", "3")
    kubectl("apply", "-n", namespace, "-f", "-", input=good)
