"""``PoolAutoscaler``: one pool's memory between decisions (no I/O, no clock).

It keeps the recent windows at the current replica count and when replicas last
changed, and hands them to ``decision.decide``. Keep one per pool (e.g. in kopf's memo)
and call ``observe`` from the pool's timer with ``now = time.time()``.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from kascade.api import v1alpha1
from kascade.api.v1alpha1 import localmodelpool
from kascade.controller.autoscale import decision


def policy_of(*, spec: v1alpha1.LocalModelPoolSpec) -> decision.ScalingPolicy:
    """The scaling policy of a pool's spec (replicas, capacity, cost, autoscaling)."""
    return decision.ScalingPolicy(
        min_replicas=spec.replicas.min,
        max_replicas=spec.replicas.max,
        max_concurrent_per_replica=spec.capacity.max_concurrent_per_replica,
        cost_per_replica_hour=spec.cost_per_replica_hour,
        target_utilization=spec.autoscaling.target_utilization,
        scale_up_stabilization_seconds=spec.autoscaling.scale_up_stabilization_seconds,
        scale_down_stabilization_seconds=spec.autoscaling.scale_down_stabilization_seconds,
    )


def last_scale_decision(
    *, result: decision.Decision, from_replicas: int, at: datetime.datetime
) -> dict[str, Any]:
    """``status.lastScaleDecision`` for a decision: {time, from, to, reason, inputs}.

    The reason is ``"<Code>: <why>"`` (at most 1024 characters); the dict is validated
    against the CRD model, so it can be written to status as is. ``at`` must be aware.
    """
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware (accepted: e.g. datetime.now(tz=UTC))")
    record = localmodelpool.ScaleDecision.model_validate(
        {
            "time": at,
            "from": from_replicas,
            "to": result.desired,
            "reason": f"{result.code}: {result.reason}"[:1024],
            "inputs": dict(result.inputs),
        }
    )
    dumped: dict[str, Any] = record.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Seen:
    at: float
    signal: decision.Signal


class PoolAutoscaler:
    """Turns each new window of one pool into a Decision, remembering the recent past."""

    def __init__(self, *, last_change_at: float | None = None) -> None:
        """``last_change_at``: when replicas last changed, e.g. from
        status.lastScaleDecision.time after an operator restart (same clock as ``now``)."""
        self._last_change_at = last_change_at
        self._replicas: int | None = None
        self._history: list[_Seen] = []
        self._last_observed_at: float | None = None
        self._pending: tuple[int, float] | None = None

    @property
    def last_change_at(self) -> float | None:
        """When replicas last changed, as far as this autoscaler knows."""
        return self._last_change_at

    def observe(
        self,
        *,
        now: float,
        window: decision.Window | None,
        current_replicas: int,
        policy: decision.ScalingPolicy,
        ready_replicas: int | None = None,
    ) -> decision.Decision:
        """Record the newest window and decide.

        ``current_replicas`` is the count the pool runs with now (as last set on the
        RayService); ``ready_replicas``, if known, how many serve (fewer holds further
        scale-ups until the last one has started). When ``current_replicas`` differs
        from the previous call, replicas changed: the history is dropped (its
        utilisation was measured against another capacity) and the change time is the
        time of the decision that asked for it, else ``now``.
        A decision whose ``desired`` differs from ``current_replicas`` is assumed to be
        applied by the caller; if it was not, the next call simply decides again.
        """
        self._note_replicas(now, current_replicas)
        history = self._recent_history(now, policy)
        covers = None
        if window is not None:
            # Time since the previous call, so overlapping windows do not count twice.
            spacing = 0.0 if self._last_observed_at is None else now - self._last_observed_at
            covers = max(0.0, min(window.window_seconds, spacing))
        since = None if self._last_change_at is None else max(0.0, now - self._last_change_at)
        result = decision.decide(
            decision.DecisionInputs(
                policy=policy,
                current_replicas=current_replicas,
                window=window,
                history=history,
                seconds_since_last_change=since,
                ready_replicas=ready_replicas,
                newest_covers_seconds=covers,
            )
        )
        if window is not None:
            newest = decision.signal_of(
                window=window, replicas=current_replicas, policy=policy, covers_seconds=covers
            )
            self._history.append(_Seen(at=now, signal=newest))
        if result.desired != current_replicas:
            self._pending = (result.desired, now)
        self._last_observed_at = now
        return result

    def _note_replicas(self, now: float, current_replicas: int) -> None:
        """A changed count drops the history (measured against another capacity)."""
        if self._replicas is not None and current_replicas != self._replicas:
            pending = self._pending
            self._last_change_at = (
                pending[1] if pending is not None and pending[0] == current_replicas else now
            )
            self._history.clear()
        self._replicas = current_replicas
        self._pending = None

    def _recent_history(
        self, now: float, policy: decision.ScalingPolicy
    ) -> tuple[decision.Signal, ...]:
        longest = max(
            policy.scale_up_stabilization_seconds, policy.scale_down_stabilization_seconds
        )
        # Only windows that began inside the longest stabilisation window can matter.
        self._history = [s for s in self._history if now - s.at < longest]
        return tuple(
            dataclasses.replace(s.signal, age_seconds=now - s.at) for s in reversed(self._history)
        )
