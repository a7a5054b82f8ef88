"""The scaling rule: figures of a pool over recent windows in, desired replicas out.

Pure: no I/O, no clock. Only ``overflow`` escalations (the pool was full) and
utilisation argue for more replicas; ``low_confidence`` escalations are reported but
never scale up, because more replicas of the same model are no more confident, and
neither do ``prompt_too_long`` ones, because more replicas take no longer prompts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["up", "down", "hold"]

OVERFLOW = "overflow"
LOW_CONFIDENCE = "low_confidence"
PROMPT_TOO_LONG = "prompt_too_long"
DEGENERATE = "degenerate"
REASONS = (
    "low_confidence",
    "degenerate",
    "overflow",
    "rule",
    "local_error",
    "invalid_format",
    "prompt_too_long",
)
"""Escalation reasons of the gateway metrics contract."""


@dataclass(frozen=True, kw_only=True)
class ScalingPolicy:
    """The pool's spec values the rule needs (replicas, capacity, cost, autoscaling)."""

    min_replicas: int
    max_replicas: int
    max_concurrent_per_replica: int
    cost_per_replica_hour: float
    target_utilization: float
    scale_up_stabilization_seconds: float
    scale_down_stabilization_seconds: float

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.min_replicas <= self.max_replicas:
            problems.append(
                f"min_replicas={self.min_replicas}, max_replicas={self.max_replicas} "
                "(accepted: 0 <= min <= max)"
            )
        if self.max_concurrent_per_replica < 1:
            problems.append(
                f"max_concurrent_per_replica={self.max_concurrent_per_replica} (accepted: >= 1)"
            )
        if not self.cost_per_replica_hour >= 0:
            problems.append(f"cost_per_replica_hour={self.cost_per_replica_hour} (accepted: >= 0)")
        if not 0 < self.target_utilization <= 1:
            problems.append(f"target_utilization={self.target_utilization} (accepted: 0 < t <= 1)")
        if not (
            self.scale_up_stabilization_seconds >= 0 and self.scale_down_stabilization_seconds >= 0
        ):
            problems.append("stabilisation seconds must be >= 0")
        if problems:
            raise ValueError("invalid scaling policy: " + "; ".join(problems))


@dataclass(frozen=True, kw_only=True)
class Window:
    """What one pool saw over one window, summed over all gateway replicas."""

    window_seconds: float
    """Length of the window the counts cover."""
    requests: float
    """Requests that reached (or tried to reach) the pool's local pass."""
    escalations: Mapping[str, float] = field(default_factory=dict)
    """Escalations by reason (low_confidence, overflow, rule, local_error, invalid_format,
    prompt_too_long); only overflow argues for more replicas."""
    overflow_spend_usd: float = 0.0
    """USD settled for overflow escalations over the window."""
    avg_inflight: float = 0.0
    """Average requests in the pool's local pass, all gateway replicas together."""

    def __post_init__(self) -> None:
        if not self.window_seconds > 0:
            raise ValueError(f"window_seconds={self.window_seconds} (accepted: > 0)")
        negative = [
            f"{name}={value}"
            for name, value in (
                ("requests", self.requests),
                ("overflow_spend_usd", self.overflow_spend_usd),
                ("avg_inflight", self.avg_inflight),
                *((f"escalations[{r!r}]", v) for r, v in self.escalations.items()),
            )
            if value < 0
        ]
        if negative:
            raise ValueError(f"negative window figures: {', '.join(negative)} (accepted: >= 0)")


@dataclass(frozen=True, kw_only=True)
class Signal:
    """One window condensed to what the stabilisation check needs."""

    age_seconds: float
    """How long before the newest window's end this window ended (0 for the newest)."""
    covers_seconds: float
    """Seconds this window stands for in stabilisation (its length, or the spacing
    between decisions when windows overlap)."""
    requests: float
    utilization: float
    overflow_escalations: float
    overflow_spend_usd_per_hour: float


@dataclass(frozen=True, kw_only=True)
class DecisionInputs:
    """Everything ``decide`` looks at."""

    policy: ScalingPolicy
    current_replicas: int
    """Replicas the operator last set on the pool."""
    window: Window | None
    """The newest window, or None when no figures exist yet (first scrape, all failed)."""
    history: tuple[Signal, ...] = ()
    """Earlier windows at the same replica count, newest first (ages > 0)."""
    seconds_since_last_change: float | None = None
    """Seconds since replicas last changed; None when unknown (treated as long ago)."""
    ready_replicas: int | None = None
    """Replicas serving now, if known. Fewer than ``current_replicas`` means the last
    scale-up is still starting (loading the model): no further scale-up until they are
    ready, since the missing capacity is already on its way."""
    newest_covers_seconds: float | None = None
    """Seconds the newest window stands for in stabilisation; defaults to its length.
    Overlapping windows (Prometheus ranges longer than the interval) pass the spacing
    between decisions instead, so a long range cannot satisfy stabilisation at once."""


@dataclass(frozen=True, kw_only=True)
class Decision:
    """The outcome: desired replicas, direction and why."""

    desired: int
    direction: Direction
    reason: str
    """Human-readable, naming the figures, e.g. 'overflow escalations cost $1.20/h > ...'."""
    code: str
    """CamelCase reason for status and Events, e.g. 'OverflowSpendAboveReplicaCost'."""
    inputs: Mapping[str, float] = field(default_factory=dict)
    """The numeric inputs (camelCase keys), for status.lastScaleDecision.inputs."""


def utilization(*, avg_inflight: float, replicas: int, max_concurrent_per_replica: int) -> float:
    """Average in-flight requests over the pool's capacity; 1.0 when busy at 0 replicas."""
    capacity = replicas * max_concurrent_per_replica
    if capacity <= 0:
        return 1.0 if avg_inflight > 0 else 0.0
    return avg_inflight / capacity


def signal_of(
    *, window: Window, replicas: int, policy: ScalingPolicy, covers_seconds: float | None = None
) -> Signal:
    """Condense a window into a Signal (age 0) covering ``covers_seconds`` (default: all)."""
    hours = window.window_seconds / 3600
    return Signal(
        age_seconds=0.0,
        covers_seconds=window.window_seconds if covers_seconds is None else covers_seconds,
        requests=window.requests,
        utilization=utilization(
            avg_inflight=window.avg_inflight,
            replicas=replicas,
            max_concurrent_per_replica=policy.max_concurrent_per_replica,
        ),
        overflow_escalations=window.escalations.get(OVERFLOW, 0.0),
        overflow_spend_usd_per_hour=window.overflow_spend_usd / hours,
    )


def _spend_case(signal: Signal, policy: ScalingPolicy) -> bool:
    # Free replicas (cost 0) are worth adding for any overflow, even one settled at $0.
    if policy.cost_per_replica_hour == 0:
        return signal.overflow_escalations > 0 or signal.overflow_spend_usd_per_hour > 0
    return signal.overflow_spend_usd_per_hour > policy.cost_per_replica_hour


def _busy_case(signal: Signal, policy: ScalingPolicy, replicas: int) -> bool:
    if replicas == 0:
        return signal.requests > 0
    return signal.utilization > policy.target_utilization


def _low_threshold(policy: ScalingPolicy, replicas: int) -> float:
    """Utilisation below which one replica fewer would still be under target."""
    return policy.target_utilization * (replicas - 1) / replicas


def _low_case(signal: Signal, policy: ScalingPolicy, replicas: int) -> bool:
    if signal.overflow_escalations > 0:
        return False
    if replicas == 1:
        # Going to zero is only safe for a pool nobody uses.
        return signal.requests == 0 and signal.utilization == 0
    return signal.utilization < _low_threshold(policy, replicas)


def _held(
    signals: tuple[Signal, ...], holds: Mapping[int, bool], needed: float
) -> tuple[float, tuple[Signal, ...]]:
    """How far back (seconds) the case held without a break, and those windows.

    Walks newest first and stops at the first window where the case failed, or once
    ``needed`` seconds are covered (older windows no longer matter).
    """
    covered = 0.0
    stretch: list[Signal] = []
    for index, signal in enumerate(signals):
        if not holds[index]:
            break
        covered = signal.age_seconds + signal.covers_seconds
        stretch.append(signal)
        if covered >= needed:
            break
    return covered, tuple(stretch)


def _money(value: float) -> str:
    return f"${value:.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"


def _inputs(inputs: DecisionInputs, newest: Signal | None) -> dict[str, float]:
    policy = inputs.policy
    figures: dict[str, float] = {
        "currentReplicas": float(inputs.current_replicas),
        **(
            {"readyReplicas": float(inputs.ready_replicas)}
            if inputs.ready_replicas is not None
            else {}
        ),
        "minReplicas": float(policy.min_replicas),
        "maxReplicas": float(policy.max_replicas),
        "replicaCostUSDPerHour": policy.cost_per_replica_hour,
        "targetUtilization": policy.target_utilization,
    }
    window = inputs.window
    if window is not None and newest is not None:
        figures.update(
            {
                "windowSeconds": window.window_seconds,
                "requests": window.requests,
                "utilization": round(newest.utilization, 4),
                "avgInflight": window.avg_inflight,
                "overflowSpendUSD": window.overflow_spend_usd,
                "overflowSpendUSDPerHour": round(newest.overflow_spend_usd_per_hour, 6),
            }
        )
        for reason in REASONS:
            key = "".join(part.capitalize() for part in reason.split("_"))
            figures[f"escalations{key}"] = window.escalations.get(reason, 0.0)
    return figures


@dataclass(frozen=True)
class _Outcome:
    desired: int
    code: str
    reason: str


_IGNORED = {
    LOW_CONFIDENCE: "more replicas do not raise confidence",
    PROMPT_TOO_LONG: "more replicas take no longer prompts",
    DEGENERATE: "more copies of the model loop the same way",
}
"""Escalation reasons that cost money but that no replica count changes, and why; the
reason line names them so an operator sees they were weighed and set aside."""


def _ignored(window: Window) -> str:
    return "".join(
        f"; {count:g} {reason} escalations ignored ({why})"
        for reason, why in _IGNORED.items()
        if (count := window.escalations.get(reason, 0.0)) > 0
    )


def _waiting(held: float, since: float | None, needed: float) -> float | None:
    """Seconds waited so far when stabilisation is not yet met, else None."""
    if held < needed or (since is not None and since < needed):
        return held if since is None else min(held, since)
    return None


def _up_case(inputs: DecisionInputs, window: Window, newest: Signal) -> tuple[str, str]:
    """(code, words) naming why scaling up is argued for."""
    policy = inputs.policy
    spend = newest.overflow_spend_usd_per_hour
    cost = policy.cost_per_replica_hour
    if inputs.current_replicas == 0:
        return "RequestsAtZeroReplicas", (
            f"{window.requests:g} requests reached a pool with 0 replicas"
        )
    if _spend_case(newest, policy) and cost == 0:
        return "OverflowSpendAboveReplicaCost", (
            f"{newest.overflow_escalations:g} overflow escalations of {window.requests:g} "
            f"requests cost {_money(spend)}/h and replicas are free (costPerReplicaHour 0)"
        )
    if _spend_case(newest, policy):
        return "OverflowSpendAboveReplicaCost", (
            f"overflow escalations cost {_money(spend)}/h > one replica {_money(cost)}/h "
            f"({newest.overflow_escalations:g} overflow of {window.requests:g} requests)"
        )
    return "UtilizationAboveTarget", (
        f"utilisation {newest.utilization:.2f} > target {policy.target_utilization:.2f}"
    )


def _scale_up(
    inputs: DecisionInputs, window: Window, signals: tuple[Signal, ...]
) -> _Outcome | None:
    """The scale-up (or the reason for holding it back), or None if nothing argues for it."""
    policy = inputs.policy
    current = inputs.current_replicas
    holds = {
        i: _spend_case(s, policy) or _busy_case(s, policy, current) for i, s in enumerate(signals)
    }
    if not holds[0]:
        return None
    newest = signals[0]
    code, case = _up_case(inputs, window, newest)
    if current >= policy.max_replicas:
        return _Outcome(current, "AtMaxReplicas", f"{case}, but already at replicas.max {current}")
    ready = inputs.ready_replicas
    if ready is not None and ready < current:
        return _Outcome(
            current,
            "WaitingForReplicas",
            f"{case}; waiting for {current - ready} of {current} replicas to become ready",
        )
    needed = policy.scale_up_stabilization_seconds
    held, _ = _held(signals, holds, needed)
    waited = _waiting(held, inputs.seconds_since_last_change, needed)
    if waited is not None:
        return _Outcome(
            current,
            "Stabilizing",
            f"{case}; held {waited:.0f}s of {needed:.0f}s scale-up stabilisation",
        )
    desired = current + 1
    if code == "UtilizationAboveTarget":
        # Utilisation says how far: enough replicas to bring it back to target.
        wanted = math.ceil(current * newest.utilization / policy.target_utilization - 1e-9)
        desired = max(desired, wanted)
    return _Outcome(min(desired, policy.max_replicas), code, f"{case} for {held:.0f}s")


def _scale_down(
    inputs: DecisionInputs, window: Window, signals: tuple[Signal, ...]
) -> _Outcome | None:
    """The scale-down (or the reason for holding it back), or None if the pool is busy."""
    policy = inputs.policy
    current = inputs.current_replicas
    holds = {i: _low_case(s, policy, current) for i, s in enumerate(signals)}
    if not holds[0]:
        return None
    ignored = _ignored(window)
    if current == 1:
        case = "no requests and no overflow"
    else:
        case = (
            f"utilisation {signals[0].utilization:.2f} < {_low_threshold(policy, current):.2f} "
            f"(target {policy.target_utilization:.2f} * {current - 1}/{current}) "
            "with no overflow"
        )
    if current <= policy.min_replicas:
        return _Outcome(
            current, "AtMinReplicas", f"{case}, but already at replicas.min {current}{ignored}"
        )
    needed = policy.scale_down_stabilization_seconds
    held, stretch = _held(signals, holds, needed)
    waited = _waiting(held, inputs.seconds_since_last_change, needed)
    if waited is not None:
        return _Outcome(
            current,
            "Stabilizing",
            f"{case}; held {waited:.0f}s of {needed:.0f}s scale-down stabilisation{ignored}",
        )
    desired = 0
    if current > 1:
        # The busiest window of the held stretch decides how many replicas stay.
        peak = max(s.utilization for s in stretch)
        desired = math.floor(current * peak / policy.target_utilization) + 1
    desired = max(policy.min_replicas, min(desired, current - 1))
    return _Outcome(desired, "UtilizationBelowTarget", f"{case} for {held:.0f}s{ignored}")


def _steady(inputs: DecisionInputs, window: Window, newest: Signal) -> _Outcome:
    policy = inputs.policy
    ignored = _ignored(window)
    if inputs.current_replicas == 0:
        return _Outcome(0, "Steady", f"no requests at 0 replicas{ignored}")
    blocked = " (overflow blocks scale-down)" if newest.overflow_escalations > 0 else ""
    return _Outcome(
        inputs.current_replicas,
        "Steady",
        f"utilisation {newest.utilization:.2f} within target {policy.target_utilization:.2f}, "
        f"overflow spend {_money(newest.overflow_spend_usd_per_hour)}/h <= one replica "
        f"{_money(policy.cost_per_replica_hour)}/h{blocked}{ignored}",
    )


def decide(inputs: DecisionInputs) -> Decision:
    """Decide the pool's replicas for the newest window.

    Up (one step, or more when utilisation says so) when overflow escalation spend per
    hour exceeds one replica's cost per hour, or utilisation exceeds the target, held
    without a break for the scale-up stabilisation window. Down by what keeps
    utilisation under target when utilisation stays below ``target * (n-1)/n`` with no
    overflow for the scale-down stabilisation window. Never outside [min, max].
    """
    policy = inputs.policy
    current = inputs.current_replicas
    if current < 0:
        raise ValueError(f"current_replicas={current} (accepted: >= 0)")
    window = inputs.window
    newest = None
    if window is not None:
        newest = signal_of(
            window=window,
            replicas=current,
            policy=policy,
            covers_seconds=inputs.newest_covers_seconds,
        )

    if current < policy.min_replicas:
        outcome = _Outcome(
            policy.min_replicas,
            "BelowMinReplicas",
            f"{current} replicas < replicas.min {policy.min_replicas}",
        )
    elif current > policy.max_replicas:
        outcome = _Outcome(
            policy.max_replicas,
            "AboveMaxReplicas",
            f"{current} replicas > replicas.max {policy.max_replicas}",
        )
    elif window is None or newest is None:
        outcome = _Outcome(current, "NoMetrics", "no metrics window yet; keeping replicas")
    else:
        signals = (newest, *inputs.history)
        outcome = (
            _scale_up(inputs, window, signals)
            or (None if current == 0 else _scale_down(inputs, window, signals))
            or _steady(inputs, window, newest)
        )
    direction: Direction = (
        "up" if outcome.desired > current else "down" if outcome.desired < current else "hold"
    )
    return Decision(
        desired=outcome.desired,
        direction=direction,
        reason=outcome.reason,
        code=outcome.code,
        inputs=_inputs(inputs, newest),
    )
