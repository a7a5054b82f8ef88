"""The real KubeRay operator acting on what Kascade renders: RayClusters, their head and
worker pods placed by the real scheduler on the simulated nodes that match each pool's
hardware, and the Services; plus what happens on deletion with the operator gone
(no finalizer holds a pool or its namespace)."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.testkit import KubectlRunner

from e2e import kuberay as kuberay_mod
from e2e import operator_support as ops

pytestmark = pytest.mark.cluster

GPU_POOL = textwrap.dedent(
    """
    apiVersion: kascade.io/v1alpha1
    kind: LocalModelPool
    metadata: {name: big}
    spec:
      model: {runtime: vllm, source: "hf://Qwen/Qwen2.5-0.5B-Instruct/-"}
      replicas: {min: 1, max: 2, initial: 2}
      resources: {cpu: "2", memory: 8Gi, gpu: 1}
      placement:
        nodeSelector: {kascade.io/hardware: gpu}
        tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
      costPerReplicaHour: 2.5
    """
)
CPU_POOL = textwrap.dedent(
    """
    apiVersion: kascade.io/v1alpha1
    kind: LocalModelPool
    metadata: {name: small}
    spec:
      model: {runtime: llama-cpp, source: "builtin://smollm2-135m-instruct"}
      replicas: {min: 1, max: 3, initial: 3}
      resources: {cpu: "1", memory: 1Gi}
      costPerReplicaHour: 0.01
    """
)


@pytest.fixture
def operator(
    kubeconfig: str, kubectl: KubectlRunner, kuberay: kuberay_mod.KubeRayOperator
) -> Iterator[ops.OperatorProcess]:
    # kuberay: the session's real KubeRay operator runs beside this one.
    yield from ops.running_operator(kubeconfig, kubectl, log_tail=6000)


def _pods(kubectl: KubectlRunner, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    )["items"]
    return [p for p in items if p["status"].get("phase") == "Running"]


def _workers_of(kubectl: KubectlRunner, namespace: str, pool: str, count: int) -> Any:
    def check() -> list[dict[str, Any]] | None:
        clusters = json.loads(kubectl("get", "raycluster", "-n", namespace, "-o", "json").stdout)[
            "items"
        ]
        names = [
            c["metadata"]["name"] for c in clusters if c["metadata"]["name"].startswith(f"{pool}-")
        ]
        if len(names) != 1:
            return None
        pods = _pods(kubectl, namespace, f"ray.io/cluster={names[0]},ray.io/node-type=worker")
        return pods if len(pods) == count else None

    return ops.wait_for(f"{count} Running workers of {pool}", check, timeout=120)


def test_workers_run_on_nodes_matching_the_pool_hardware(
    operator: ops.OperatorProcess, kubectl: KubectlRunner, namespace: str
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=GPU_POOL + "---\n" + CPU_POOL)
    gpu_workers = _workers_of(kubectl, namespace, "big", 2)
    for pod in gpu_workers:
        assert pod["spec"]["nodeName"] == "kwok-gpu-0"
        tolerations = pod["spec"].get("tolerations") or []
        assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), tolerations
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
    cpu_workers = _workers_of(kubectl, namespace, "small", 3)
    assert {p["spec"]["nodeName"] for p in cpu_workers} == {"kwok-cpu-0"}
    # KubeRay made the head pods and the head Services too.
    for pool in ("big", "small"):
        heads = _pods(kubectl, namespace, "ray.io/node-type=head")
        assert any(p["metadata"]["labels"]["ray.io/cluster"].startswith(f"{pool}-") for p in heads)
    services = json.loads(kubectl("get", "services", "-n", namespace, "-o", "json").stdout)
    names = {s["metadata"]["name"] for s in services["items"]}
    assert any(n.startswith("big-") and n.endswith("-head-svc") for n in names), names
    # No Ray runs for this namespace (no LocalServe): KubeRay never promotes the
    # cluster, so the pools truthfully report no ready (serving) replicas.
    pool = json.loads(kubectl("get", "lmp", "big", "-n", namespace, "-o", "json").stdout)
    assert pool["status"]["replicas"]["ready"] == 0


def test_no_finalizers_so_deleting_the_namespace_after_uninstall_does_not_hang(
    operator: ops.OperatorProcess, kubectl: KubectlRunner, kubeconfig: str
) -> None:
    namespace = f"t-finalizers-{int(time.time()) % 100000}"
    kubectl("create", "namespace", namespace)
    kubectl("apply", "-n", namespace, "-f", "-", input=CPU_POOL)
    # An object an earlier version marked with its finalizer: the operator removes it.
    legacy = CPU_POOL.replace("name: small}", "name: legacy, finalizers: [kascade.io/finalizer]}")
    kubectl("apply", "-n", namespace, "-f", "-", input=legacy)
    ops.wait_for(
        "the RayService of the pool",
        lambda: kubectl("get", "rayservice", "small", "-n", namespace, check=False).returncode == 0,
    )
    ops.wait_for(
        "the legacy finalizer removed",
        lambda: (
            not json.loads(kubectl("get", "lmp", "legacy", "-n", namespace, "-o", "json").stdout)[
                "metadata"
            ].get("finalizers")
        ),
        timeout=60,
    )
    pool = json.loads(kubectl("get", "lmp", "small", "-n", namespace, "-o", "json").stdout)
    assert not pool["metadata"].get("finalizers")
    # "Uninstall": the operator is gone; the namespace must still go away.
    operator.stop()
    started = time.monotonic()
    kubectl("delete", "namespace", namespace, "--wait=false")
    ops.wait_for(
        "the namespace deleted",
        lambda: kubectl("get", "namespace", namespace, check=False).returncode != 0,
        timeout=120,
        interval=1,
    )
    print(f"NAMESPACE_DELETE seconds={time.monotonic() - started:.1f}")
