"""The operator's per-pool gauges: set from a reconcile, dropped when the pool goes."""

from __future__ import annotations

import prometheus_client

from kascade.api import v1alpha1
from kascade.controller import pool_metrics


def _pool() -> v1alpha1.LocalModelPool:
    return v1alpha1.LocalModelPool.model_validate(
        {
            "apiVersion": "kascade.io/v1alpha1",
            "kind": "LocalModelPool",
            "metadata": {"name": "tiny", "namespace": "team-a"},
            "spec": {
                "model": {"runtime": "llama-cpp", "source": "builtin://smollm2-135m-instruct"},
                "replicas": {"min": 1, "max": 3},
                "capacity": {"maxConcurrentPerReplica": 2},
            },
        }
    )


def _value(name: str, **labels: str) -> float | None:
    return prometheus_client.REGISTRY.get_sample_value(name, labels)


def test_gauges_follow_the_reconcile_and_go_with_the_pool() -> None:
    pool_metrics.observe_pool(namespace="team-a", pool=_pool(), desired=2, ready=1)
    labels = {"pool_namespace": "team-a", "pool": "tiny"}
    states = {"desired": 2, "ready": 1, "min": 1, "max": 3}
    for state, expected in states.items():
        assert _value("kascade_pool_replicas", **labels, state=state) == expected
    assert _value("kascade_pool_max_concurrent_per_replica", **labels) == 2
    pool_metrics.forget_pool(namespace="team-a", name="tiny")
    assert _value("kascade_pool_replicas", **labels, state="desired") is None
    assert _value("kascade_pool_max_concurrent_per_replica", **labels) is None
    pool_metrics.forget_pool(namespace="team-a", name="tiny")  # already gone: no error
