"""Gateway metrics: parse the exposition text, diff two scrapes, sum the replicas.

Pure functions plus ``CounterTracker``, which keeps the previous scrape of each gateway
replica (no I/O). Counters are diffed per replica before summing, so one replica's
restart (its counters go down) counts that replica from 0 without disturbing the rest.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from prometheus_client import parser

from kascade.controller.autoscale import decision

REQUESTS = "kascade_pool_requests_total"
ESCALATIONS = "kascade_pool_escalations_total"
ESCALATION_COST = "kascade_pool_escalation_cost_usd_total"
INFLIGHT = "kascade_pool_inflight_requests"


@dataclass(frozen=True, kw_only=True)
class PoolCounters:
    """One pool's figures at one gateway replica: cumulative counters and the gauge."""

    requests: float = 0.0
    escalations: Mapping[str, float] = field(default_factory=dict)
    """Cumulative escalations by reason."""
    escalation_cost_usd: Mapping[str, float] = field(default_factory=dict)
    """Cumulative USD settled for escalations by reason."""
    inflight: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """One successful scrape of one gateway replica."""

    at: float
    """When it was taken (seconds, any clock shared by all snapshots)."""
    pools: Mapping[str, PoolCounters]


def parse(text: str) -> dict[str, PoolCounters]:
    """Parse one replica's ``/metrics`` text into counters per pool.

    Raises ValueError naming the problem when the text is not Prometheus text format.
    Series without a ``pool`` label, and other metrics, are ignored.
    """
    requests: dict[str, float] = {}
    escalations: dict[str, dict[str, float]] = {}
    cost: dict[str, dict[str, float]] = {}
    inflight: dict[str, float] = {}
    try:
        families = list(parser.text_string_to_metric_families(text))
    except Exception as error:  # the parser raises ValueError, TypeError, IndexError...
        raise ValueError(
            f"gateway metrics are not Prometheus text format ({error}); "
            "accepted: the text exposition served at /metrics"
        ) from error
    for family in families:
        for sample in family.samples:
            pool = sample.labels.get("pool")
            if pool is None:
                continue
            reason = sample.labels.get("reason", "")
            if sample.name == REQUESTS:
                requests[pool] = requests.get(pool, 0.0) + sample.value
            elif sample.name == ESCALATIONS:
                by_reason = escalations.setdefault(pool, {})
                by_reason[reason] = by_reason.get(reason, 0.0) + sample.value
            elif sample.name == ESCALATION_COST:
                by_reason = cost.setdefault(pool, {})
                by_reason[reason] = by_reason.get(reason, 0.0) + sample.value
            elif sample.name == INFLIGHT:
                inflight[pool] = inflight.get(pool, 0.0) + sample.value
    pools = set(requests) | set(escalations) | set(cost) | set(inflight)
    return {
        pool: PoolCounters(
            requests=requests.get(pool, 0.0),
            escalations=escalations.get(pool, {}),
            escalation_cost_usd=cost.get(pool, {}),
            inflight=inflight.get(pool, 0.0),
        )
        for pool in sorted(pools)
    }


def increase(*, previous: float | None, current: float) -> float:
    """How much a counter grew; a counter that went down was reset, so count from 0.

    ``previous`` None means the series did not exist at a replica seen before (a
    labelled series appears on its first increment), so it counts from 0 as well.
    """
    if previous is None or current < previous:
        return current
    return current - previous


def _increase_by_reason(
    previous: Mapping[str, float], current: Mapping[str, float]
) -> dict[str, float]:
    return {
        reason: increase(previous=previous.get(reason), current=value)
        for reason, value in current.items()
    }


@dataclass(frozen=True, kw_only=True)
class _Growth:
    requests: float
    escalations: dict[str, float]
    cost: dict[str, float]


def _growth(previous: PoolCounters | None, current: PoolCounters) -> _Growth:
    before = previous or PoolCounters()
    # Any counter of the pool that went down means the replica restarted: count all from 0.
    reset = (
        current.requests < before.requests
        or any(current.escalations.get(r, 0.0) < v for r, v in before.escalations.items())
        or any(
            current.escalation_cost_usd.get(r, 0.0) < v
            for r, v in before.escalation_cost_usd.items()
        )
    )
    if reset:
        before = PoolCounters()
    return _Growth(
        requests=increase(previous=before.requests, current=current.requests),
        escalations=_increase_by_reason(before.escalations, current.escalations),
        cost=_increase_by_reason(before.escalation_cost_usd, current.escalation_cost_usd),
    )


def window(
    *,
    pool: str,
    previous: Mapping[str, Snapshot],
    current: Mapping[str, Snapshot],
    window_seconds: float,
) -> decision.Window | None:
    """The pool's window from two scrapes of the gateway replicas (keyed by address).

    Each replica's growth is diffed on its own and scaled from the span between its own
    two snapshots to ``window_seconds`` (a replica whose last scrape failed spans
    longer), then summed. A replica only in ``current`` is a baseline and adds nothing
    but its in-flight gauge. Returns None when no replica is in both scrapes.
    """
    if window_seconds <= 0:
        raise ValueError(f"window_seconds={window_seconds} (accepted: > 0)")
    requests = 0.0
    escalations: dict[str, float] = {}
    cost: dict[str, float] = {}
    inflight = 0.0
    compared = 0
    for address, now in current.items():
        now_pool = now.pools.get(pool, PoolCounters())
        before = previous.get(address)
        if before is None:
            inflight += now_pool.inflight
            continue
        span = now.at - before.at
        if span <= 0:
            continue
        compared += 1
        before_pool = before.pools.get(pool)
        grown = _growth(before_pool, now_pool)
        scale = window_seconds / span
        requests += grown.requests * scale
        for reason, value in grown.escalations.items():
            escalations[reason] = escalations.get(reason, 0.0) + value * scale
        for reason, value in grown.cost.items():
            cost[reason] = cost.get(reason, 0.0) + value * scale
        # Two samples of the gauge: their mean stands for the window's average.
        inflight += (now_pool.inflight + (before_pool.inflight if before_pool else 0.0)) / 2
    if compared == 0:
        return None
    return decision.Window(
        window_seconds=window_seconds,
        requests=requests,
        escalations=escalations,
        overflow_spend_usd=cost.get(decision.OVERFLOW, 0.0),
        avg_inflight=inflight,
    )


class CounterTracker:
    """Keeps the last successful snapshot of each gateway replica (no I/O).

    ``advance`` takes this round's snapshots and returns the pool's window since the
    previous round. A replica that failed this round keeps its older snapshot, so its
    growth is not lost but spread over its longer span next time.
    """

    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._last_at: float | None = None

    def advance(
        self,
        *,
        pool: str,
        at: float,
        snapshots: Mapping[str, Snapshot],
        endpoints: Collection[str],
    ) -> decision.Window | None:
        """Record this round and return the window since the last round, if any.

        ``endpoints`` lists every replica address known now (scraped or not); snapshots
        of replicas no longer listed are dropped.
        """
        result = None
        if self._last_at is not None and at > self._last_at:
            result = window(
                pool=pool,
                previous=self._snapshots,
                current=snapshots,
                window_seconds=at - self._last_at,
            )
        kept = {a: s for a, s in self._snapshots.items() if a in endpoints}
        kept.update(snapshots)
        self._snapshots = kept
        if snapshots:
            self._last_at = at
        return result
