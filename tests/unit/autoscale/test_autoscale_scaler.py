"""PoolAutoscaler over time: reaction, stabilisation, no flapping, replica changes."""

from __future__ import annotations

import datetime

import pytest

from kascade.api.v1alpha1 import localmodelpool
from kascade.controller import autoscale

POLICY = autoscale.ScalingPolicy(
    min_replicas=1,
    max_replicas=4,
    max_concurrent_per_replica=2,
    cost_per_replica_hour=0.10,
    target_utilization=0.7,
    scale_up_stabilization_seconds=60,
    scale_down_stabilization_seconds=300,
)
INTERVAL = 30.0


def overflowing(replicas: int) -> autoscale.Window:
    # A saturated pool: every slot busy, 10 overflow escalations at $0.002 each per window,
    # $2.40/h against $0.10/h for a replica.
    return autoscale.Window(
        window_seconds=INTERVAL,
        requests=60,
        escalations={"overflow": 10},
        overflow_spend_usd=0.02,
        avg_inflight=2.0 * replicas,
    )


def quiet(replicas: int, *, low_confidence: float = 0) -> autoscale.Window:
    return autoscale.Window(
        window_seconds=INTERVAL,
        requests=10,
        escalations={"low_confidence": low_confidence} if low_confidence else {},
        avg_inflight=0.1 * replicas,
    )


def test_sustained_overflow_scales_up_within_two_intervals_and_stops_at_max() -> None:
    scaler = autoscale.PoolAutoscaler()
    replicas = 1
    changes: list[tuple[float, int, int, str]] = []
    assert scaler.observe(now=0, window=None, current_replicas=1, policy=POLICY).code == (
        "NoMetrics"
    )
    for tick in range(1, 40):
        now = tick * INTERVAL
        result = scaler.observe(
            now=now, window=overflowing(replicas), current_replicas=replicas, policy=POLICY
        )
        if result.desired != replicas:
            changes.append((now, replicas, result.desired, result.code))
            replicas = result.desired
    # The first overflow window ends at 30 s; the case has held 60 s at 60 s.
    assert changes[0] == (60.0, 1, 2, "OverflowSpendAboveReplicaCost")
    # Each further step waits the scale-up stabilisation again, at the new replica count.
    assert [c[0] for c in changes] == [60.0, 120.0, 180.0]
    assert replicas == 4
    assert scaler.last_change_at == 180.0


def test_low_confidence_only_load_never_scales_up() -> None:
    scaler = autoscale.PoolAutoscaler()
    for tick in range(200):
        result = scaler.observe(
            now=tick * INTERVAL,
            window=autoscale.Window(
                window_seconds=INTERVAL,
                requests=100,
                escalations={"low_confidence": 100},
                avg_inflight=1.0,  # utilisation 0.5 of one replica: under target
            ),
            current_replicas=2,
            policy=POLICY,
        )
        assert result.direction != "up", result.reason


def test_scale_down_waits_the_stabilisation_window_after_load_stops() -> None:
    scaler = autoscale.PoolAutoscaler(last_change_at=0.0)
    replicas = 3
    first_down = None
    # The scraping source's first read is a baseline without a window.
    scaler.observe(now=0, window=None, current_replicas=replicas, policy=POLICY)
    for tick in range(1, 30):
        now = tick * INTERVAL
        result = scaler.observe(
            now=now, window=quiet(replicas), current_replicas=replicas, policy=POLICY
        )
        if result.direction == "down":
            first_down = now
            replicas = result.desired
            break
        assert result.code == "Stabilizing"
    assert first_down == 300.0
    assert replicas == 1  # utilisation 0.05 of 3 replicas: one replica stays under target


def test_load_swinging_every_interval_does_not_flap() -> None:
    scaler = autoscale.PoolAutoscaler()
    for tick in range(1, 100):
        window = overflowing(2) if tick % 2 else quiet(2)
        result = scaler.observe(
            now=tick * INTERVAL, window=window, current_replicas=2, policy=POLICY
        )
        assert result.direction == "hold", (tick, result.reason)


def test_replica_change_drops_history_measured_at_the_old_capacity() -> None:
    scaler = autoscale.PoolAutoscaler()
    for tick in range(1, 12):
        scaler.observe(now=tick * INTERVAL, window=quiet(3), current_replicas=3, policy=POLICY)
    # Someone else (or our last decision) set 2 replicas: the low stretch starts again.
    result = scaler.observe(now=12 * INTERVAL, window=quiet(2), current_replicas=2, policy=POLICY)
    assert result.code == "Stabilizing"
    assert "held 0s of 300s" in result.reason
    assert scaler.last_change_at == 12 * INTERVAL


def test_applied_decision_counts_from_when_it_was_made() -> None:
    scaler = autoscale.PoolAutoscaler()
    scaler.observe(now=0, window=None, current_replicas=1, policy=POLICY)
    scaler.observe(now=30, window=overflowing(1), current_replicas=1, policy=POLICY)
    up = scaler.observe(now=60, window=overflowing(1), current_replicas=1, policy=POLICY)
    assert up.desired == 2
    # The patch landed; the next observation sees 2 replicas 45 s later.
    scaler.observe(now=105, window=overflowing(2), current_replicas=2, policy=POLICY)
    assert scaler.last_change_at == 60


def test_overlapping_prometheus_ranges_do_not_shortcut_stabilisation() -> None:
    scaler = autoscale.PoolAutoscaler()
    long_range = autoscale.Window(
        window_seconds=300,
        requests=600,
        escalations={"overflow": 100},
        overflow_spend_usd=0.2,
        avg_inflight=2.0,
    )
    codes = [
        scaler.observe(now=t, window=long_range, current_replicas=1, policy=POLICY).code
        for t in (0.0, 30.0, 60.0)
    ]
    assert codes == ["Stabilizing", "Stabilizing", "OverflowSpendAboveReplicaCost"]


def test_policy_of_reads_the_pool_spec() -> None:
    spec = localmodelpool.LocalModelPoolSpec.model_validate(
        {
            "model": {"runtime": "llama-cpp", "source": "builtin://smollm2-135m-instruct"},
            "replicas": {"min": 1, "max": 3},
            "capacity": {"maxConcurrentPerReplica": 2},
            "costPerReplicaHour": 0.5,
            "autoscaling": {
                "enabled": True,
                "targetUtilization": 0.6,
                "scaleUpStabilizationSeconds": 30,
                "scaleDownStabilizationSeconds": 120,
            },
        }
    )
    assert autoscale.policy_of(spec=spec) == autoscale.ScalingPolicy(
        min_replicas=1,
        max_replicas=3,
        max_concurrent_per_replica=2,
        cost_per_replica_hour=0.5,
        target_utilization=0.6,
        scale_up_stabilization_seconds=30,
        scale_down_stabilization_seconds=120,
    )


def test_no_further_scale_up_while_the_last_replica_is_starting() -> None:
    scaler = autoscale.PoolAutoscaler()
    replicas, ready = 1, 1
    timeline = []
    scaler.observe(now=0, window=None, current_replicas=1, ready_replicas=1, policy=POLICY)
    for tick in range(1, 9):
        if tick == 6:
            ready = replicas  # the model finished loading on the new replica
        result = scaler.observe(
            now=tick * INTERVAL,
            window=overflowing(replicas),
            current_replicas=replicas,
            ready_replicas=ready,
            policy=POLICY,
        )
        timeline.append(result.code)
        replicas = result.desired
    assert timeline == [
        "Stabilizing",
        "OverflowSpendAboveReplicaCost",  # 60 s: 1 -> 2
        "WaitingForReplicas",
        "WaitingForReplicas",
        "WaitingForReplicas",
        "OverflowSpendAboveReplicaCost",  # ready at 180 s, held since 90 s: 2 -> 3
        "WaitingForReplicas",
        "WaitingForReplicas",
    ]
    assert replicas == 3


def test_last_scale_decision_is_the_status_record() -> None:
    scaler = autoscale.PoolAutoscaler()
    scaler.observe(now=0, window=overflowing(1), current_replicas=1, policy=POLICY)
    result = scaler.observe(now=60, window=overflowing(1), current_replicas=1, policy=POLICY)
    at = datetime.datetime(2026, 11, 27, 21, 30, tzinfo=datetime.UTC)

    record = autoscale.last_scale_decision(result=result, from_replicas=1, at=at)

    assert record["time"] == "2026-11-27T21:30:00Z"
    assert (record["from"], record["to"]) == (1, 2)
    assert record["reason"].startswith("OverflowSpendAboveReplicaCost: overflow escalations")
    assert record["inputs"]["overflowSpendUSDPerHour"] == pytest.approx(2.4)
    with pytest.raises(ValueError, match="timezone-aware"):
        autoscale.last_scale_decision(
            result=result, from_replicas=1, at=datetime.datetime(2026, 11, 27)
        )


def test_public_names_are_exactly_all() -> None:
    public = {name for name in dir(autoscale) if not name.startswith("_")}
    modules = {"decision", "metrics", "scaler", "sources"}
    assert public - modules == set(autoscale.__all__)
