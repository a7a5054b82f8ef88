"""Leader election decides from the Lease as read, what this process observed of it and
its own clock: expired leases are taken, held ones respected, its own renewed. The
clock is injected (plain numbers); nothing sleeps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kascade.controller import leader
from kascade.controller.leader import Action, decide, lease_for, observe, released

ME, OTHER = "pod-a_1234abcd", "pod-b_5678ef01"
WALL = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def lease(
    holder: str | None, *, renew: str = "2025-03-01T11:59:58.000000Z", rv: str = "7"
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "leaseDurationSeconds": 15,
        "acquireTime": "2025-03-01T11:00:00.000000Z",
        "renewTime": renew,
        "leaseTransitions": 3,
    }
    if holder is not None:
        spec["holderIdentity"] = holder
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "kascade-operator",
            "namespace": "kascade-system",
            "resourceVersion": rv,
        },
        "spec": spec,
    }


def at(
    current: dict[str, Any] | None, now: float, previous: leader.Observation | None = None
) -> tuple[leader.Observation, leader.Decision]:
    observation = observe(previous, current, now)
    return observation, decide(current, observation, now, ME)


def test_no_lease_is_created() -> None:
    _, decision = at(None, 100.0)
    assert decision.action is Action.CREATE


def test_a_lease_held_by_another_is_respected_until_it_expires_on_our_clock() -> None:
    held = lease(OTHER)
    first, decision = at(held, 100.0)
    assert decision == leader.Decision(Action.WAIT, expires_in=15.0)
    # The same record seen again: the clock keeps running from the first sighting.
    second, decision = at(held, 110.0, first)
    assert second is first
    assert decision.action is Action.WAIT
    assert decision.expires_in == pytest.approx(5.0)
    _, decision = at(held, 114.9, second)
    assert decision.action is Action.WAIT


def test_an_expired_lease_is_taken() -> None:
    held = lease(OTHER)
    first, _ = at(held, 100.0)
    _, decision = at(held, 115.0, first)
    assert decision.action is Action.TAKE


def test_a_renewal_restarts_the_expiry_clock() -> None:
    first, _ = at(lease(OTHER), 100.0)
    renewed = lease(OTHER, renew="2025-03-01T12:00:03.000000Z", rv="8")
    second, decision = at(renewed, 114.0, first)
    assert second.at == 114.0
    assert decision == leader.Decision(Action.WAIT, expires_in=15.0)
    _, decision = at(renewed, 128.9, second)
    assert decision.action is Action.WAIT
    _, decision = at(renewed, 129.0, second)
    assert decision.action is Action.TAKE


def test_the_renew_time_written_in_the_lease_is_not_trusted() -> None:
    # A holder whose clock runs an hour behind still gets its full duration.
    stale = lease(OTHER, renew="2025-03-01T11:00:00.000000Z")
    _, decision = at(stale, 100.0)
    assert decision.action is Action.WAIT


def test_own_lease_is_renewed() -> None:
    _, decision = at(lease(ME), 100.0)
    assert decision.action is Action.RENEW


def test_a_released_lease_is_taken_at_once() -> None:
    _, decision = at(lease(None), 100.0)
    assert decision.action is Action.TAKE
    _, decision = at(lease(""), 100.0)
    assert decision.action is Action.TAKE


def test_taking_writes_the_read_resource_version_and_counts_a_transition() -> None:
    written = lease_for(
        lease(OTHER, rv="42"),
        Action.TAKE,
        identity=ME,
        name="kascade-operator",
        namespace="kascade-system",
        wall=WALL,
        duration=15,
    )
    assert written["metadata"]["resourceVersion"] == "42"
    assert written["spec"] == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 15,
        "acquireTime": "2025-03-01T12:00:00.123456Z",
        "renewTime": "2025-03-01T12:00:00.123456Z",
        "leaseTransitions": 4,
    }


def test_renewing_keeps_the_acquire_time_and_transitions() -> None:
    written = lease_for(
        lease(ME, rv="9"),
        Action.RENEW,
        identity=ME,
        name="kascade-operator",
        namespace="kascade-system",
        wall=WALL,
        duration=15,
    )
    assert written["metadata"]["resourceVersion"] == "9"
    assert written["spec"]["acquireTime"] == "2025-03-01T11:00:00.000000Z"
    assert written["spec"]["renewTime"] == "2025-03-01T12:00:00.123456Z"
    assert written["spec"]["leaseTransitions"] == 3


def test_creating_carries_no_resource_version() -> None:
    written = lease_for(
        None,
        Action.CREATE,
        identity=ME,
        name="kascade-operator",
        namespace="kascade-system",
        wall=WALL,
        duration=15,
    )
    assert "resourceVersion" not in written["metadata"]
    assert written["spec"]["holderIdentity"] == ME
    assert written["spec"]["leaseTransitions"] == 0
    with pytest.raises(ValueError, match="nothing to write"):
        lease_for(
            None,
            Action.WAIT,
            identity=ME,
            name="x",
            namespace="y",
            wall=WALL,
            duration=15,
        )


def test_release_clears_the_holder_conditionally() -> None:
    out = released(lease(ME, rv="11"), wall=WALL)
    assert "holderIdentity" not in out["spec"]
    assert out["metadata"]["resourceVersion"] == "11"
    assert out["spec"]["leaseDurationSeconds"] == 1
    _, decision = at(out, 0.0)
    assert decision.action is Action.TAKE


def test_timing_keeps_the_leader_deadline_inside_the_lease() -> None:
    timing = leader.Timing()
    assert timing.renew_deadline < timing.lease_duration
    with pytest.raises(ValueError, match="renew_deadline < lease_duration"):
        leader.Timing(lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError, match="renew_period < renew_deadline"):
        leader.Timing(renew_period=10, renew_deadline=10)


def test_identities_are_unique_per_process_start() -> None:
    assert leader.default_identity() != leader.default_identity()
