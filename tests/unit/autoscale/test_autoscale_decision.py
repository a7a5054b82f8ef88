"""The scaling rule, case by case: spend, utilisation, stabilisation, bounds, reasons."""

from __future__ import annotations

import dataclasses
import datetime
import random
from typing import Any

import pytest

from kascade.api.v1alpha1 import localmodelpool
from kascade.controller import autoscale
from kascade.controller.autoscale import decision

POLICY = autoscale.ScalingPolicy(
    min_replicas=1,
    max_replicas=5,
    max_concurrent_per_replica=4,
    cost_per_replica_hour=0.04,
    target_utilization=0.7,
    scale_up_stabilization_seconds=60,
    scale_down_stabilization_seconds=300,
)


def window(
    *,
    seconds: float = 30,
    requests: float = 40,
    inflight: float = 0.0,
    overflow: float = 0,
    spend: float = 0.0,
    low_confidence: float = 0,
    prompt_too_long: float = 0,
    degenerate: float = 0,
) -> autoscale.Window:
    escalations = {}
    if overflow:
        escalations["overflow"] = overflow
    if low_confidence:
        escalations["low_confidence"] = low_confidence
    if prompt_too_long:
        escalations["prompt_too_long"] = prompt_too_long
    if degenerate:
        escalations["degenerate"] = degenerate
    return autoscale.Window(
        window_seconds=seconds,
        requests=requests,
        escalations=escalations,
        overflow_spend_usd=spend,
        avg_inflight=inflight,
    )


def earlier(
    *,
    age: float,
    covers: float = 30,
    utilization: float = 0.5,
    overflow: float = 0,
    spend_per_hour: float = 0.0,
    requests: float = 40,
) -> autoscale.Signal:
    return autoscale.Signal(
        age_seconds=age,
        covers_seconds=covers,
        requests=requests,
        utilization=utilization,
        overflow_escalations=overflow,
        overflow_spend_usd_per_hour=spend_per_hour,
    )


# $0.01 over 30 s is $1.20/h, thirty times one replica's $0.04/h.
OVERFLOWING = {"overflow": 12, "spend": 0.01, "inflight": 8.0}
OVERFLOW_BEFORE = earlier(age=30, utilization=1.0, overflow=12, spend_per_hour=1.2)


def low_history(utilization: float, count: int = 9) -> tuple[autoscale.Signal, ...]:
    return tuple(earlier(age=30 * (i + 1), utilization=utilization) for i in range(count))


# (id, current, window kwargs or None, history, since, policy changes,
#  expected desired, direction, code, words the reason must contain)
# fmt: off
CASES: list[tuple[Any, ...]] = [
    (
        "overflow spend above replica cost, held 60s: one more",
        2, OVERFLOWING, (OVERFLOW_BEFORE,), None, {},
        3, "up", "OverflowSpendAboveReplicaCost",
        ["overflow escalations cost $1.20/h > one replica $0.04/h", "for 60s"],
    ),
    (
        "overflow spend above cost, held only 30s of 60s: wait",
        2, OVERFLOWING, (), None, {},
        2, "hold", "Stabilizing", ["held 30s of 60s scale-up stabilisation"],
    ),
    (
        "overflow held, but replicas changed 40s ago: wait",
        2, OVERFLOWING, (OVERFLOW_BEFORE,), 40.0, {},
        2, "hold", "Stabilizing", ["held 40s of 60s"],
    ),
    (
        "spend exactly one replica's cost: no scale-up, overflow blocks scale-down",
        2, {"seconds": 3600, "overflow": 3, "spend": 0.5, "inflight": 1.0}, (), None,
        {"cost_per_replica_hour": 0.5, "scale_up_stabilization_seconds": 0},
        2, "hold", "Steady", ["overflow blocks scale-down", "$0.50/h <= one replica $0.50/h"],
    ),
    (
        "spend just above one replica's cost: up",
        2, {"seconds": 3600, "overflow": 3, "spend": 0.5001, "inflight": 1.0}, (), None,
        {"cost_per_replica_hour": 0.5, "scale_up_stabilization_seconds": 0},
        3, "up", "OverflowSpendAboveReplicaCost", ["> one replica $0.50/h"],
    ),
    (
        "free replicas: any overflow scales up, even settled at $0",
        2, {"overflow": 2, "spend": 0.0, "inflight": 2.0}, (), None,
        {"cost_per_replica_hour": 0.0, "scale_up_stabilization_seconds": 0},
        3, "up", "OverflowSpendAboveReplicaCost",
        ["2 overflow escalations of 40 requests cost $0.00/h and replicas are free"],
    ),
    (
        "costly low_confidence escalations never scale up",
        2, {"low_confidence": 1000, "inflight": 4.0, "requests": 1000},
        (earlier(age=30, utilization=0.5),), None, {"scale_up_stabilization_seconds": 0},
        2, "hold", "Steady", ["1000 low_confidence escalations ignored"],
    ),
    (
        "prompt_too_long escalations never scale up: no replica takes a longer prompt",
        2, {"prompt_too_long": 1000, "inflight": 4.0, "requests": 1000},
        (earlier(age=30, utilization=0.5),), None,
        {"scale_up_stabilization_seconds": 0, "cost_per_replica_hour": 0.0},
        2, "hold", "Steady", ["1000 prompt_too_long escalations ignored"],
    ),
    (
        "degenerate escalations never scale up: more copies loop the same way",
        2, {"degenerate": 1000, "inflight": 4.0, "requests": 1000},
        (earlier(age=30, utilization=0.5),), None,
        {"scale_up_stabilization_seconds": 0, "cost_per_replica_hour": 0.0},
        2, "hold", "Steady", ["1000 degenerate escalations ignored"],
    ),
    (
        "prompt_too_long escalations do not block scale-down",
        3, {"prompt_too_long": 50, "inflight": 1.2}, low_history(0.1), None, {},
        1, "down", "UtilizationBelowTarget", ["50 prompt_too_long escalations ignored"],
    ),
    (
        "low_confidence escalations do not block scale-down",
        3, {"low_confidence": 50, "inflight": 1.2}, low_history(0.1), None, {},
        1, "down", "UtilizationBelowTarget", ["50 low_confidence escalations ignored"],
    ),
    (
        "utilisation above target, held: enough replicas for the target",
        2, {"inflight": 8.0}, (earlier(age=30, utilization=1.0),), None, {},
        3, "up", "UtilizationAboveTarget", ["utilisation 1.00 > target 0.70", "for 60s"],
    ),
    (
        "queued far beyond capacity: several replicas at once",
        2, {"inflight": 12.0}, (earlier(age=30, utilization=1.5),), None, {},
        5, "up", "UtilizationAboveTarget", ["utilisation 1.50"],
    ),
    (
        "several replicas wanted, capped at max",
        2, {"inflight": 12.0}, (earlier(age=30, utilization=1.5),), None, {"max_replicas": 4},
        4, "up", "UtilizationAboveTarget", [],
    ),
    (
        "utilisation exactly at target: hold",
        2, {"inflight": 5.6}, (), None, {"scale_up_stabilization_seconds": 0},
        2, "hold", "Steady", ["utilisation 0.70 within target 0.70"],
    ),
    (
        "utilisation dipped below target inside the window: the streak restarts",
        2, {"inflight": 8.0}, (earlier(age=30, utilization=0.6), earlier(age=60, utilization=1.0)),
        None, {},
        2, "hold", "Stabilizing", ["held 30s of 60s"],
    ),
    (
        "at max with overflow: hold",
        5, OVERFLOWING, (OVERFLOW_BEFORE,), None, {},
        5, "hold", "AtMaxReplicas", ["already at replicas.max 5"],
    ),
    (
        "below min: raise to min at once",
        0, None, (), 1.0, {"min_replicas": 2},
        2, "up", "BelowMinReplicas", ["0 replicas < replicas.min 2"],
    ),
    (
        "above max: lower to max at once",
        7, {"inflight": 28.0}, (), 1.0, {},
        5, "down", "AboveMaxReplicas", ["7 replicas > replicas.max 5"],
    ),
    (
        "no window yet: hold",
        2, None, (), None, {},
        2, "hold", "NoMetrics", ["no metrics window"],
    ),
    (
        "low utilisation without overflow for 300s: down to what stays under target",
        3, {"inflight": 3.6}, low_history(0.3), None, {},
        2, "down", "UtilizationBelowTarget",
        ["utilisation 0.30 < 0.47 (target 0.70 * 2/3) with no overflow", "for 300s"],
    ),
    (
        "the busiest window of the stretch decides how far down",
        3, {"inflight": 1.2}, low_history(0.4), None, {},
        2, "down", "UtilizationBelowTarget", [],
    ),
    (
        "low, but only for 150s of 300s: wait",
        3, {"inflight": 1.2}, low_history(0.1, count=4), None, {},
        3, "hold", "Stabilizing", ["held 150s of 300s scale-down stabilisation"],
    ),
    (
        "low, but an overflow 60s ago: the streak restarts",
        3, {"inflight": 1.2},
        (earlier(age=30, utilization=0.1), earlier(age=60, utilization=0.1, overflow=1),
         *low_history(0.1)[2:]),
        None, {},
        3, "hold", "Stabilizing", ["held 60s of 300s"],
    ),
    (
        "low, but scaled up 100s ago: wait",
        3, {"inflight": 1.2}, low_history(0.1), 100.0, {},
        3, "hold", "Stabilizing", ["held 100s of 300s"],
    ),
    (
        "utilisation at the scale-down threshold: hold",
        2, {"inflight": 3.0}, low_history(0.3), None,
        {"target_utilization": 0.6, "max_concurrent_per_replica": 5},
        2, "hold", "Steady", [],
    ),
    (
        "utilisation just under the scale-down threshold: down",
        2, {"inflight": 2.9}, low_history(0.29), None,
        {"target_utilization": 0.6, "max_concurrent_per_replica": 5},
        1, "down", "UtilizationBelowTarget", ["0.29 < 0.30"],
    ),
    (
        "scale-down never goes below min",
        3, {"inflight": 0.6}, low_history(0.05), None, {"min_replicas": 2},
        2, "down", "UtilizationBelowTarget", [],
    ),
    (
        "at min and idle: hold",
        1, {"inflight": 0.0, "requests": 0}, low_history(0.0), None, {},
        1, "hold", "AtMinReplicas", ["already at replicas.min 1"],
    ),
    (
        "one replica, min 0, no requests for 300s: to zero",
        1, {"inflight": 0.0, "requests": 0},
        tuple(earlier(age=30 * (i + 1), utilization=0.0, requests=0) for i in range(9)), None,
        {"min_replicas": 0},
        0, "down", "UtilizationBelowTarget", ["no requests and no overflow"],
    ),
    (
        "one replica, min 0, a trickle of requests: stay",
        1, {"inflight": 0.0, "requests": 3}, low_history(0.0), None, {"min_replicas": 0},
        1, "hold", "Steady", [],
    ),
    (
        "zero replicas and requests arriving, held: one replica",
        0, {"inflight": 0.0, "requests": 5}, (earlier(age=30, utilization=0.0, requests=4),), None,
        {"min_replicas": 0},
        1, "up", "RequestsAtZeroReplicas", ["5 requests reached a pool with 0 replicas"],
    ),
    (
        "zero replicas and no requests: stay at zero",
        0, {"inflight": 0.0, "requests": 0}, (), None, {"min_replicas": 0},
        0, "hold", "Steady", ["no requests at 0 replicas"],
    ),
    (
        "no stabilisation configured: overflow scales up at once",
        1, OVERFLOWING, (), None, {"scale_up_stabilization_seconds": 0},
        2, "up", "OverflowSpendAboveReplicaCost", ["for 30s"],
    ),
]
# fmt: on


@pytest.mark.parametrize(
    ("current", "figures", "history", "since", "changes", "desired", "direction", "code", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_decide_follows_the_rule(
    current: int,
    figures: dict[str, float] | None,
    history: tuple[autoscale.Signal, ...],
    since: float | None,
    changes: dict[str, Any],
    desired: int,
    direction: str,
    code: str,
    words: list[str],
) -> None:
    policy = dataclasses.replace(POLICY, **changes)
    result = autoscale.decide(
        autoscale.DecisionInputs(
            policy=policy,
            current_replicas=current,
            window=None if figures is None else window(**figures),
            history=history,
            seconds_since_last_change=since,
        )
    )
    assert (result.desired, result.direction, result.code) == (desired, direction, code), (
        result.reason
    )
    for word in words:
        assert word in result.reason
    assert policy.min_replicas <= result.desired <= policy.max_replicas


def test_low_confidence_never_scales_up_however_costly_or_long() -> None:
    # Every window full of expensive low_confidence escalations, for an hour.
    history = tuple(earlier(age=30 * (i + 1), utilization=0.6, requests=500) for i in range(120))
    for current in range(1, 5):
        result = autoscale.decide(
            autoscale.DecisionInputs(
                policy=POLICY,
                current_replicas=current,
                window=window(requests=500, low_confidence=500, inflight=0.6 * 4 * current),
                history=history,
            )
        )
        assert result.desired <= current, result.reason


def test_inputs_fit_the_status_schema() -> None:
    result = autoscale.decide(
        autoscale.DecisionInputs(
            policy=POLICY,
            current_replicas=2,
            window=window(**OVERFLOWING, low_confidence=3),
            history=(OVERFLOW_BEFORE,),
        )
    )
    status = localmodelpool.ScaleDecision.model_validate(
        {
            "time": datetime.datetime.now(tz=datetime.UTC).isoformat(),
            "from": 2,
            "to": result.desired,
            "reason": result.reason,
            "inputs": dict(result.inputs),
        }
    )
    assert status.inputs["overflowSpendUSDPerHour"] == pytest.approx(1.2)
    assert status.inputs["escalationsOverflow"] == 12
    assert status.inputs["escalationsLowConfidence"] == 3
    assert status.inputs["utilization"] == 1.0


def test_newest_window_covers_only_the_spacing_when_given() -> None:
    # A 120 s Prometheus range read 10 s after the previous decision stands for 10 s.
    result = autoscale.decide(
        autoscale.DecisionInputs(
            policy=POLICY,
            current_replicas=2,
            window=window(seconds=120, overflow=40, spend=0.04, inflight=8.0),
            newest_covers_seconds=10,
        )
    )
    assert (result.direction, result.code) == ("hold", "Stabilizing")
    assert "held 10s of 60s" in result.reason


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas=3, max_replicas=2"),
        ({"target_utilization": 0.0}, "target_utilization=0.0 (accepted: 0 < t <= 1)"),
        ({"target_utilization": 1.5}, "target_utilization=1.5"),
        ({"max_concurrent_per_replica": 0}, "max_concurrent_per_replica=0 (accepted: >= 1)"),
        ({"cost_per_replica_hour": -1.0}, "cost_per_replica_hour=-1.0 (accepted: >= 0)"),
        ({"scale_up_stabilization_seconds": -1}, "stabilisation seconds must be >= 0"),
    ],
)
def test_invalid_policy_is_refused_naming_the_field(changes: dict[str, Any], words: str) -> None:
    fields = {f.name: getattr(POLICY, f.name) for f in dataclasses.fields(POLICY)}
    with pytest.raises(ValueError, match="invalid scaling policy") as raised:
        autoscale.ScalingPolicy(**{**fields, **changes})
    assert words in str(raised.value)


def test_negative_current_replicas_is_refused() -> None:
    with pytest.raises(ValueError, match=r"current_replicas=-1 \(accepted: >= 0\)"):
        autoscale.decide(autoscale.DecisionInputs(policy=POLICY, current_replicas=-1, window=None))


def test_utilization_at_zero_replicas() -> None:
    assert decision.utilization(avg_inflight=0, replicas=0, max_concurrent_per_replica=4) == 0
    assert decision.utilization(avg_inflight=2, replicas=0, max_concurrent_per_replica=4) == 1
    assert decision.utilization(avg_inflight=2, replicas=2, max_concurrent_per_replica=4) == 0.25


@pytest.mark.parametrize(
    ("figures", "words"),
    [
        ({"window_seconds": 0, "requests": 1}, r"window_seconds=0 \(accepted: > 0\)"),
        (
            {"window_seconds": 30, "requests": -1, "escalations": {"overflow": -2}},
            r"negative window figures: requests=-1, escalations\['overflow'\]=-2",
        ),
    ],
)
def test_invalid_window_is_refused(figures: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        autoscale.Window(**figures)


def test_invariants_over_random_inputs() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        low, high = sorted((rng.randint(0, 6), rng.randint(1, 8)))
        policy = autoscale.ScalingPolicy(
            min_replicas=low,
            max_replicas=max(high, 1),
            max_concurrent_per_replica=rng.randint(1, 8),
            cost_per_replica_hour=rng.choice([0.0, 0.01, 0.5, 5.0]),
            target_utilization=rng.choice([0.3, 0.7, 1.0]),
            scale_up_stabilization_seconds=rng.choice([0, 30, 60]),
            scale_down_stabilization_seconds=rng.choice([0, 60, 300]),
        )
        current = rng.randint(0, 10)
        overflow = rng.choice([0, 0, 3])
        figures = window(
            requests=rng.randint(0, 100),
            inflight=rng.uniform(0, 40),
            overflow=overflow,
            spend=rng.uniform(0, 0.5) if overflow else 0.0,
            low_confidence=rng.choice([0, 1000]),
        )
        history = tuple(
            earlier(
                age=30 * (i + 1),
                utilization=rng.uniform(0, 2),
                overflow=rng.choice([0, 0, 1]),
                spend_per_hour=rng.uniform(0, 10),
            )
            for i in range(rng.randint(0, 12))
        )
        inputs = autoscale.DecisionInputs(
            policy=policy,
            current_replicas=current,
            window=figures,
            history=history,
            seconds_since_last_change=rng.choice([None, 0.0, 45.0, 1000.0]),
        )
        result = autoscale.decide(inputs)
        assert policy.min_replicas <= result.desired <= policy.max_replicas, inputs
        in_bounds = policy.min_replicas <= current <= policy.max_replicas
        utilization = decision.utilization(
            avg_inflight=figures.avg_inflight,
            replicas=current,
            max_concurrent_per_replica=policy.max_concurrent_per_replica,
        )
        if in_bounds and current > 0 and not overflow and utilization <= policy.target_utilization:
            # Only overflow or utilisation argue for more; low_confidence never does.
            assert result.direction != "up", (inputs, result.reason)
        if in_bounds and overflow:
            assert result.direction != "down", (inputs, result.reason)
