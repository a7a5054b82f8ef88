"""A pool whose model changes rolls to a new RayCluster on the real KubeRay operator
without losing ready capacity, and one whose nodes have no room for a second cluster
keeps serving the old model instead of rolling.

The operator renders the RayService with ``upgradeStrategy: NewCluster`` and the model's
hash on the worker template, so KubeRay prepares a pending RayCluster for a new model and
switches its Services to it only once the new cluster's Serve application is RUNNING.
The stand-in for Ray (``dataplane.ReportedServe``, the one thing a simulated pod cannot
do) reports an application RUNNING on a cluster only once that cluster's Ready workers
can hold its replicas, as Serve does; ``hold()`` keeps the new model "loading" so the
test can look at the roll halfway. Everything else (RayClusters, pods, nodes, Services,
Endpoints, the RayService's status and the switch) is KubeRay's and Kubernetes' own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from tests.testkit import KubectlRunner

from e2e import dataplane
from e2e import kuberay as kuberay_mod
from e2e import operator_support as ops

pytestmark = pytest.mark.cluster

OLD_MODEL = "builtin://smollm2-135m-instruct"
NEW_MODEL = "hf://HuggingFaceTB/SmolLM2-360M-Instruct-GGUF/smollm2-360m-instruct-q8_0.gguf"
REPLICAS = 2


def _pool(name: str, *, source: str, gpu: bool = False) -> str:
    """A pool of ``REPLICAS`` pinned replicas: on the CPU node, or taking both GPUs of the
    GPU node."""
    if gpu:
        hardware = [
            "runtime: vllm",
            'resources: {cpu: "2", memory: 8Gi, gpu: 1}',
            "placement:",
            "  nodeSelector: {kascade.io/hardware: gpu}",
            "  tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
        ]
    else:
        hardware = ["runtime: llama-cpp", 'resources: {cpu: "1", memory: 1Gi}']
    runtime, *rest = hardware
    lines = [
        "apiVersion: kascade.io/v1alpha1",
        "kind: LocalModelPool",
        f"metadata: {{name: {name}}}",
        "spec:",
        f'  model: {{{runtime}, source: "{source}"}}',
        f"  replicas: {{min: {REPLICAS}, max: {REPLICAS}}}",
        *(f"  {line}" for line in rest),
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def operator(
    kubeconfig: str, kubectl: KubectlRunner, kuberay: kuberay_mod.KubeRayOperator
) -> Iterator[ops.OperatorProcess]:
    # kuberay: the session's real KubeRay operator runs beside this one.
    yield from ops.running_operator(kubeconfig, kubectl, log_tail=4000)


@pytest.fixture
def reported(
    kuberay: kuberay_mod.KubeRayOperator, namespace: str
) -> Iterator[dataplane.ReportedServe]:
    """The namespace's Serve applications, reported per RayCluster."""
    serve = kuberay.heads.report(namespace)
    yield serve
    kuberay.heads.serves.pop(namespace, None)


@dataclass(frozen=True)
class Sample:
    """One look at everything that says whether the pool serves, taken in one read."""

    at: float
    active: str | None
    pending: str | None
    active_ready_workers: int
    pending_ready_workers: int
    active_app_running: bool
    serve_selects: str | None
    serve_endpoints: int
    """Ready worker pods (of any cluster) behind the pool's serve Service: where
    requests go."""
    rayservice_ready: bool
    pending_app_status: str | None
    pool_ready: bool
    pool_ready_replicas: int
    pool_progressing: tuple[str, str]
    pool_generation: tuple[int, int | None]
    """(metadata.generation, status.observedGeneration)"""


class Observer:
    """Reads the pool, its RayService, Services, Endpoints and pods in one ``kubectl get``
    per sample, and keeps every sample."""

    def __init__(
        self, kubectl: KubectlRunner, namespace: str, pool: str, serve: dataplane.ReportedServe
    ) -> None:
        self.kubectl, self.namespace, self.pool, self.serve = kubectl, namespace, pool, serve
        self.samples: list[Sample] = []

    def sample(self) -> Sample:
        got = self.kubectl(
            "get", "lmp,rayservice,services,endpoints,pods", "-n", self.namespace, "-o", "json"
        )
        items: list[dict[str, Any]] = json.loads(got.stdout)["items"]
        by_kind: dict[str, dict[str, dict[str, Any]]] = {}
        for item in items:
            by_kind.setdefault(item["kind"], {})[item["metadata"]["name"]] = item
        pool = by_kind.get("LocalModelPool", {}).get(self.pool) or {}
        rayservice = by_kind.get("RayService", {}).get(self.pool) or {}
        st = rayservice.get("status") or {}
        active = (st.get("activeServiceStatus") or {}).get("rayClusterName") or None
        pending_status = st.get("pendingServiceStatus") or {}
        pending = pending_status.get("rayClusterName") or None
        pods = list(by_kind.get("Pod", {}).values())
        serve_svc = by_kind.get("Service", {}).get(f"{self.pool}-serve-svc") or {}
        selector = (serve_svc.get("spec") or {}).get("selector") or {}
        sample = Sample(
            at=time.monotonic(),
            active=active,
            pending=pending,
            active_ready_workers=_ready_workers(pods, active),
            pending_ready_workers=_ready_workers(pods, pending),
            active_app_running=bool(active) and self.serve.running(cluster=active or ""),
            serve_selects=selector.get("ray.io/cluster"),
            serve_endpoints=_worker_endpoints(
                by_kind.get("Endpoints", {}).get(f"{self.pool}-serve-svc"), pods
            ),
            rayservice_ready=_condition(rayservice, "Ready")[0] == "True",
            pending_app_status=_app_status(pending_status, self.pool),
            pool_ready=_condition(pool, "Ready")[0] == "True",
            pool_ready_replicas=int(((pool.get("status") or {}).get("replicas") or {})
                                    .get("ready") or 0),
            pool_progressing=_condition(pool, "Progressing"),
            pool_generation=(
                int((pool.get("metadata") or {}).get("generation") or 0),
                (pool.get("status") or {}).get("observedGeneration"),
            ),
        )  # fmt: skip
        self.samples.append(sample)
        return sample

    def until(self, what: str, done: Callable[[Sample], bool], *, timeout: float) -> Sample:
        """Samples until ``done`` holds; fails with the last sample after ``timeout``."""
        try:
            found: Sample = ops.wait_for(
                what, lambda: s if done(s := self.sample()) else None, timeout=timeout
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last sample: {self.samples[-1:]}") from None
        return found


def _ready_workers(pods: list[dict[str, Any]], cluster: str | None) -> int:
    return sum(
        1
        for pod in pods
        if cluster
        and (pod["metadata"].get("labels") or {}).get("ray.io/cluster") == cluster
        and (pod["metadata"].get("labels") or {}).get("ray.io/node-type") == "worker"
        and dataplane.pod_ready(pod)
    )


def _worker_endpoints(endpoints: dict[str, Any] | None, pods: list[dict[str, Any]]) -> int:
    workers = {
        p["metadata"]["name"]
        for p in pods
        if (p["metadata"].get("labels") or {}).get("ray.io/node-type") == "worker"
        and dataplane.pod_ready(p)
    }
    addresses = [
        a for s in (endpoints or {}).get("subsets") or [] for a in s.get("addresses") or []
    ]
    return sum(1 for a in addresses if (a.get("targetRef") or {}).get("name") in workers)


def _app_status(service_status: dict[str, Any], app: str) -> str | None:
    """An application's status as KubeRay last read it from that cluster's Serve."""
    found = ((service_status.get("applicationStatuses") or {}).get(app) or {}).get("status")
    return str(found) if found is not None else None


def _condition(obj: dict[str, Any], type_: str) -> tuple[str, str]:
    found = ops.condition(obj, type_) or {}
    return str(found.get("status")), str(found.get("reason"))


def _model_of(serve: dataplane.ReportedServe, cluster: str | None) -> str | None:
    """The model source in the Serve config KubeRay submitted to ``cluster``."""
    config = serve.config_of(cluster or "")
    if config is None:
        return None
    return str(config["applications"][0]["args"]["model"]["source"])


def _serving(s: Sample) -> bool:
    """The pool serves at full ready capacity, by every account."""
    return (
        s.active is not None
        and s.active_ready_workers >= REPLICAS
        and s.active_app_running
        and s.serve_endpoints >= REPLICAS
        and s.rayservice_ready
        and s.pool_ready
        and s.pool_ready_replicas >= REPLICAS
    )


def _set_model(kubectl: KubectlRunner, namespace: str, pool: str, source: str) -> None:
    patch = json.dumps({"spec": {"model": {"source": source}}})
    kubectl("patch", "lmp", pool, "-n", namespace, "--type=merge", "-p", patch)


def _ready_pool(
    observer: Observer, kubectl: KubectlRunner, namespace: str, yaml_text: str
) -> Sample:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml_text)
    return observer.until(
        "the pool Ready on one RayCluster with its workers",
        lambda s: _serving(s) and s.pending is None and s.pool_progressing[0] == "False",
        timeout=180,
    )


def test_a_model_change_rolls_to_a_new_cluster_without_losing_ready_capacity(
    operator: ops.OperatorProcess,
    kubectl: KubectlRunner,
    namespace: str,
    reported: dataplane.ReportedServe,
) -> None:
    observer = Observer(kubectl, namespace, "roll", reported)
    first = _ready_pool(observer, kubectl, namespace, _pool("roll", source=OLD_MODEL))
    old = first.active
    assert _model_of(reported, old) == OLD_MODEL
    rayservice = ops.get_json(kubectl, "rayservice", "roll", "-n", namespace)
    assert rayservice["spec"]["upgradeStrategy"] == {"type": "NewCluster"}

    # The new model "loads" on the pending cluster until released.
    reported.hold()
    started = time.monotonic()
    observer.samples.clear()
    _set_model(kubectl, namespace, "roll", NEW_MODEL)
    halfway = _halfway(observer, kubectl, old=old)
    pending_seen = time.monotonic() - started

    reported.release()
    switched = observer.until(
        "KubeRay switched to the new cluster",
        lambda s: s.active == halfway.pending and s.pending is None,
        timeout=120,
    )
    switch_s = time.monotonic() - started
    assert switched.serve_selects == halfway.pending
    assert _model_of(reported, switched.active) == NEW_MODEL
    observer.until(
        "the old RayCluster deleted (KubeRay's deletion delay: 60 s)",
        lambda s: (
            kubectl("get", "raycluster", old or "", "-n", namespace, check=False).returncode != 0
        ),
        timeout=180,
    )
    deleted_s = time.monotonic() - started
    _rolled(observer, kubectl, new=halfway.pending)

    # Ready capacity never lost: every sample from the spec change to the end.
    lost = [s for s in observer.samples if not _serving(s)]
    assert not lost, lost[:3]
    print(
        f"ROLL samples={len(observer.samples)} pending_ready_s={pending_seen:.1f} "
        f"switch_s={switch_s:.1f} old_deleted_s={deleted_s:.1f} "
        f"min_active_ready={min(s.active_ready_workers for s in observer.samples)} "
        f"min_serve_endpoints={min(s.serve_endpoints for s in observer.samples)}"
    )


def _halfway(observer: Observer, kubectl: KubectlRunner, *, old: str | None) -> Sample:
    """The roll halfway: the new cluster's workers are Ready but its model still loads.
    KubeRay knows the new cluster is not ready and keeps the old one serving; the pool
    says so: Ready (the old model, its replicas) and Progressing."""
    halfway = observer.until(
        "a pending RayCluster with Ready workers and the new model DEPLOYING on it",
        lambda s: (
            s.pending is not None
            and s.pending_ready_workers >= REPLICAS
            and s.pending_app_status == "DEPLOYING"
            and s.pool_progressing == ("True", "RayServiceUpgrading")
            and s.pool_generation[0] == s.pool_generation[1]
        ),
        timeout=120,
    )
    assert halfway.active == old
    assert halfway.serve_selects == old
    assert _model_of(observer.serve, old) == OLD_MODEL
    assert _model_of(observer.serve, halfway.pending) == NEW_MODEL
    assert halfway.pool_ready
    assert halfway.pool_ready_replicas == REPLICAS
    pool = ops.get_json(kubectl, "lmp", observer.pool, "-n", observer.namespace)
    message = (ops.condition(pool, "Progressing") or {}).get("message", "")
    assert f"{old} keeps serving" in message, message
    return halfway


def _rolled(observer: Observer, kubectl: KubectlRunner, *, new: str | None) -> None:
    """After the roll: the new cluster serves the new model, the pool is Ready and done."""
    final = observer.until(
        "the pool Ready and no longer progressing",
        lambda s: _serving(s) and s.pool_progressing == ("False", "Reconciled"),
        timeout=60,
    )
    assert final.active == new
    assert final.pool_generation[0] == final.pool_generation[1]
    rayservice = ops.get_json(kubectl, "rayservice", observer.pool, "-n", observer.namespace)
    served = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert served["applications"][0]["args"]["model"]["source"] == NEW_MODEL


def test_without_room_for_a_second_cluster_the_old_model_keeps_serving(
    operator: ops.OperatorProcess,
    kubectl: KubectlRunner,
    namespace: str,
    reported: dataplane.ReportedServe,
) -> None:
    """The GPU node has 2 GPUs and the pool takes both: the pending cluster's workers
    cannot be scheduled, so its replicas cannot start and KubeRay never switches."""
    observer = Observer(kubectl, namespace, "gpu", reported)
    first = _ready_pool(
        observer,
        kubectl,
        namespace,
        _pool("gpu", source="hf://Qwen/Qwen2.5-0.5B-Instruct/-", gpu=True),
    )
    observer.samples.clear()
    _set_model(kubectl, namespace, "gpu", "hf://Qwen/Qwen2.5-1.5B-Instruct/-")

    def unschedulable(s: Sample) -> bool:
        pods = json.loads(
            kubectl("get", "pods", "-n", namespace, "-l",
                    f"ray.io/cluster={s.pending},ray.io/node-type=worker", "-o", "json").stdout
        )["items"]  # fmt: skip
        return len(pods) == REPLICAS and all(
            any(
                c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
                for c in (p.get("status") or {}).get("conditions") or []
            )
            for p in pods
        )

    stalled = observer.until(
        "the pending cluster's workers Unschedulable and its application DEPLOYING",
        lambda s: (
            s.pending is not None
            and s.pending_app_status == "DEPLOYING"
            and s.pool_progressing == ("True", "RayServiceUpgrading")
            and unschedulable(s)
        ),
        timeout=120,
    )
    assert stalled.active == first.active
    assert stalled.serve_selects == first.active
    assert stalled.pending_ready_workers == 0
    lost = [s for s in observer.samples if not _serving(s)]
    assert not lost, lost[:3]
    print(
        f"STALL samples={len(observer.samples)} active={stalled.active} "
        f"pending={stalled.pending} pending_app={stalled.pending_app_status}"
    )
