"""RoutingPolicy.status.stats: counted by the gateway per policy, copied by the operator
at most once per interval, and never rewritten while the figures stand still."""

from __future__ import annotations

from kascade.controller import spend
from kascade.gateway.observe import policy_stats


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _tally() -> policy_stats.PolicyStats:
    stats = policy_stats.PolicyStats(clock=Clock())
    stats.observe(policy="p", generation=3, route="local", cache="miss", cost_nanos=0)
    stats.observe(policy="p", generation=3, route="expert:gpt", cache="miss", cost_nanos=2_500)
    stats.observe(policy="p", generation=3, route="local", cache="exact", cost_nanos=0)
    stats.observe(policy="p", generation=3, route="local", cache="semantic", cost_nanos=0)
    return stats


def test_the_gateway_counts_per_policy_and_restarts_on_a_new_generation() -> None:
    stats = _tally()
    assert stats.document("p") == {
        "generation": 3,
        "since": 1_000.0,
        "requests": 4,
        "escalated": 1,
        "cacheHits": 2,
        "costNanos": 2_500,
    }
    assert stats.document("other") is None
    stats.observe(policy="p", generation=4, route="local", cache="off", cost_nanos=0)
    assert stats.document("p") == {
        "generation": 4,
        "since": 1_000.0,
        "requests": 1,
        "escalated": 0,
        "cacheHits": 0,
        "costNanos": 0,
    }


def test_the_operator_turns_counts_into_rates() -> None:
    document = {"policies": {"p": {"generation": 3, "stats": _tally().document("p")}}}
    assert spend.policy_stats(document, policy="p") == {
        "requests": 4,
        "escalationRate": 0.25,
        "cacheHitRate": 0.5,
        "costUSD": 2.5e-6,
        "since": "1970-01-01T00:16:40Z",
    }
    assert spend.policy_stats(document, policy="q") is None
    assert spend.policy_stats(None, policy="p") is None


def test_writes_are_rate_limited_and_idle_figures_are_not_rewritten() -> None:
    clock = Clock()
    throttle = spend.StatsThrottle(clock=clock)
    first = {"requests": 1}
    assert throttle.choose("ns/p", fresh=first, stored=None) == first
    clock.now += 5
    second = {"requests": 9}
    assert throttle.choose("ns/p", fresh=second, stored=first) == first
    clock.now += spend.STATS_MIN_INTERVAL_S
    assert throttle.choose("ns/p", fresh=second, stored=first) == second
    assert throttle.choose("ns/p", fresh=second, stored=second) == second
    assert throttle.choose("ns/p", fresh=None, stored=second) == second
