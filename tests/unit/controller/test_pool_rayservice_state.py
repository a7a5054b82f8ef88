"""What a pool's status says about its RayService, as KubeRay reports it: while KubeRay
rolls to a new RayCluster the old one serves, so the pool stays Ready and says it is
Progressing (and why)."""

from __future__ import annotations

from typing import Any

from kascade.controller import conditions as cond
from kascade.controller import reconcile


def _rayservice(*, active: str, pending: str, ready: int, serving: bool) -> dict[str, Any]:
    status = "True" if serving else "False"
    return {
        "status": {
            "activeServiceStatus": {
                "rayClusterName": active,
                "rayClusterStatus": {"readyWorkerReplicas": ready},
            },
            "pendingServiceStatus": {"rayClusterName": pending},
            "conditions": [{"type": "Ready", "status": status, "message": "endpoints: 2"}],
        }
    }


def _by_type(state: reconcile.RayServiceState) -> dict[str, tuple[bool, str, str]]:
    return {str(t): (s, str(r), m) for t, s, r, m in reconcile.pool_condition_updates(state)}


def test_a_roll_keeps_the_pool_ready_with_the_old_clusters_replicas_and_says_so() -> None:
    state = reconcile.rayservice_state(
        _rayservice(active="roll-aaaaa", pending="roll-bbbbb", ready=2, serving=True)
    )
    assert (state.ready, state.active, state.pending, state.upgrading) == (
        2,
        "roll-aaaaa",
        "roll-bbbbb",
        True,
    )
    conds = _by_type(state)
    assert conds["Ready"][:2] == (True, cond.Reason.RAYSERVICE_READY)
    progressing, reason, message = conds["Progressing"]
    assert (progressing, reason) == (True, cond.Reason.RAYSERVICE_UPGRADING)
    assert "roll-bbbbb" in message
    assert "roll-aaaaa keeps serving" in message


def test_after_the_roll_the_pool_is_ready_and_no_longer_progressing() -> None:
    state = reconcile.rayservice_state(
        _rayservice(active="roll-bbbbb", pending="", ready=2, serving=True)
    )
    assert not state.upgrading
    conds = _by_type(state)
    assert conds["Ready"][0] is True
    assert conds["Progressing"][:2] == (False, cond.Reason.RECONCILED)


def test_the_first_cluster_is_progressing_not_upgrading() -> None:
    state = reconcile.rayservice_state(
        _rayservice(active="", pending="roll-aaaaa", ready=0, serving=False)
    )
    assert not state.upgrading
    conds = _by_type(state)
    assert conds["Ready"][:2] == (False, cond.Reason.RAYSERVICE_PENDING)
    assert conds["Progressing"][:2] == (True, cond.Reason.RAYSERVICE_PENDING)


def test_an_empty_status_waits_for_kuberay() -> None:
    state = reconcile.rayservice_state({})
    assert (state.ready, state.serving, state.active, state.pending) == (0, False, None, None)
    assert state.message == "waiting for KubeRay"
