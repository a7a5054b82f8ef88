"""One writer per status field, on the real API server: the autoscaler owns a pool's
``status.replicas.desired`` and writes it conditionally; a pool reconcile that runs from
an older snapshot cannot put an earlier replica count back (neither in the status nor in
the RayService it renders)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e import kuberay
from tests.testkit import KubectlRunner

from kascade.compile import resources
from kascade.controller import autoscaling, reconcile
from kascade.controller import kube as kube_mod

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[3]
POOL = textwrap.dedent(
    """
    apiVersion: kascade.io/v1alpha1
    kind: LocalModelPool
    metadata: {name: tiny}
    spec:
      model: {runtime: llama-cpp, source: "builtin://smollm2-135m-instruct"}
      replicas: {min: 1, max: 3}
      resources: {cpu: "1", memory: 1Gi}
      costPerReplicaHour: 0.01
      autoscaling: {enabled: true}
    """
)


@pytest.fixture(scope="module")
def crds(kubectl: KubectlRunner) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kuberay.install_crds(kubectl)


@pytest.fixture
async def kube(kubeconfig: str, crds: None) -> AsyncIterator[kube_mod.Kube]:
    client = await kube_mod.Kube.connect(kubeconfig=kubeconfig)
    yield client
    await client.close()


def _get(kubectl: KubectlRunner, namespace: str, kind: str, name: str) -> dict[str, Any]:
    got: dict[str, Any] = json.loads(
        kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    )
    return got


def _serve_replicas(rayservice: dict[str, Any]) -> int:
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    return int(config["applications"][0]["args"]["replicas"]["max"])


async def test_a_stale_reconcile_cannot_revert_a_scale_decision(
    kube: kube_mod.Kube, kubectl: KubectlRunner, namespace: str
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=POOL)
    ctx = reconcile.Context(kube=kube, settings=resources.Settings())
    # The autoscaler's first round stores the initial count (it is the field's one writer).
    assert await autoscaling.write_replicas(
        kube, namespace=namespace, name="tiny", expected=None, status={"replicas": {"desired": 1}}
    )
    stale = _get(kubectl, namespace, "lmp", "tiny")
    await reconcile.reconcile_pool(ctx, stale, policies=[])
    assert _serve_replicas(_get(kubectl, namespace, "rayservice", "tiny")) == 1

    # A decision 1 -> 2 lands; then a reconcile queued earlier runs with its old snapshot.
    assert await autoscaling.write_replicas(
        kube, namespace=namespace, name="tiny", expected=1, status={"replicas": {"desired": 2}}
    )
    await reconcile.reconcile_pool(ctx, stale, policies=[])
    pool = _get(kubectl, namespace, "lmp", "tiny")
    assert pool["status"]["replicas"]["desired"] == 2
    assert _serve_replicas(_get(kubectl, namespace, "rayservice", "tiny")) == 2
    rayservice = _get(kubectl, namespace, "rayservice", "tiny")
    group = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert group["replicas"] == 2

    # A decision computed from the outdated count (1) is dropped, not written over 2.
    assert not await autoscaling.write_replicas(
        kube, namespace=namespace, name="tiny", expected=1, status={"replicas": {"desired": 3}}
    )
    assert _get(kubectl, namespace, "lmp", "tiny")["status"]["replicas"]["desired"] == 2


async def test_a_conditional_write_retries_past_a_concurrent_status_write(
    kube: kube_mod.Kube, kubectl: KubectlRunner, namespace: str
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=POOL)
    assert await autoscaling.write_replicas(
        kube, namespace=namespace, name="tiny", expected=None, status={"replicas": {"desired": 1}}
    )
    old_version = _get(kubectl, namespace, "lmp", "tiny")["metadata"]["resourceVersion"]
    # Another writer's field (a reconcile's ready count) moves the resourceVersion on.
    await kube.patch_status(
        "LocalModelPool", namespace=namespace, name="tiny", status={"replicas": {"ready": 1}}
    )
    with pytest.raises(kube_mod.KubeError) as conflict:
        await kube.patch_status(
            "LocalModelPool",
            namespace=namespace,
            name="tiny",
            status={"replicas": {"desired": 5}},
            resource_version=old_version,
        )
    assert conflict.value.status == 409
    assert await autoscaling.write_replicas(
        kube, namespace=namespace, name="tiny", expected=1, status={"replicas": {"desired": 2}}
    )
    replicas = _get(kubectl, namespace, "lmp", "tiny")["status"]["replicas"]
    assert replicas == {"desired": 2, "ready": 1}
