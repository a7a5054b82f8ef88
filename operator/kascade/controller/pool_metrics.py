"""The operator's per-pool gauges (replicas and capacity), for the chart's dashboard
and the overflow-at-max-replicas alert (docs/observability.md).

The pool's namespace is the label ``pool_namespace``: scraped through a ServiceMonitor,
``namespace`` is the operator pod's own; the chart's recording rules move it back.
"""

from __future__ import annotations

import contextlib

import prometheus_client

from kascade.api import v1alpha1

REPLICAS = prometheus_client.Gauge(
    "kascade_pool_replicas",
    "Replicas of each LocalModelPool by state: desired (autoscaler), ready (KubeRay), min, max.",
    ["pool_namespace", "pool", "state"],
)
MAX_CONCURRENT = prometheus_client.Gauge(
    "kascade_pool_max_concurrent_per_replica",
    "Requests one replica of the pool processes at once (spec.capacity).",
    ["pool_namespace", "pool"],
)


def observe_pool(
    *, namespace: str, pool: v1alpha1.LocalModelPool, desired: int, ready: int
) -> None:
    """Sets the pool's gauges from one reconcile."""
    name = pool.metadata.name
    spec = pool.spec
    for state, value in (
        ("desired", desired),
        ("ready", ready),
        ("min", spec.replicas.min),
        ("max", spec.replicas.max),
    ):
        REPLICAS.labels(namespace, name, state).set(value)
    MAX_CONCURRENT.labels(namespace, name).set(spec.capacity.max_concurrent_per_replica)


def forget_pool(*, namespace: str, name: str) -> None:
    """Drops a deleted pool's series."""
    for state in ("desired", "ready", "min", "max"):
        with contextlib.suppress(KeyError):
            REPLICAS.remove(namespace, name, state)
    with contextlib.suppress(KeyError):
        MAX_CONCURRENT.remove(namespace, name)
