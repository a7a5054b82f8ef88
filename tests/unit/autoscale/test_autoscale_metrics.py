"""Gateway metrics: parsing real exposition text, per-replica deltas, resets, sums."""

from __future__ import annotations

from typing import Any

import pytest

from kascade.controller import autoscale
from kascade.controller.autoscale import metrics


def snapshot(at: float, replica: Any) -> metrics.Snapshot:
    return metrics.Snapshot(at=at, pools=metrics.parse(replica.text()))


def test_parse_reads_each_pool_of_real_exposition_text(gateway_metrics: Any) -> None:
    replica = gateway_metrics()
    replica.serve(
        pool="small",
        requests=10,
        inflight=3,
        escalations={"overflow": (4, 0.02), "low_confidence": (2, 0.5)},
    )
    replica.serve(pool="tiny", requests=1, inflight=0)

    pools = autoscale.parse_metrics(replica.text())

    assert set(pools) == {"small", "tiny"}
    small = pools["small"]
    assert small.requests == 10
    assert small.inflight == 3
    assert dict(small.escalations) == {"overflow": 4, "low_confidence": 2}
    assert small.escalation_cost_usd["overflow"] == pytest.approx(0.02)
    assert small.escalation_cost_usd["low_confidence"] == pytest.approx(0.5)
    assert pools["tiny"].requests == 1
    assert not pools["tiny"].escalations


def test_parse_ignores_other_metrics_and_series_without_pool() -> None:
    text = (
        "# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total 12.5\n"
        "# TYPE kascade_pool_requests_total counter\n"
        'kascade_pool_requests_total{pool="a"} 7\n'
        "kascade_pool_requests_total 99\n"
    )
    assert {p: c.requests for p, c in metrics.parse(text).items()} == {"a": 7}


def test_parse_refuses_text_that_is_not_exposition_format() -> None:
    with pytest.raises(ValueError, match="not Prometheus text format") as raised:
        metrics.parse('kascade_pool_requests_total{pool="a" 7\n')
    assert "accepted: the text exposition served at /metrics" in str(raised.value)


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        pytest.param(10.0, 15.0, 5.0, id="grew"),
        pytest.param(10.0, 10.0, 0.0, id="unchanged"),
        pytest.param(10.0, 3.0, 3.0, id="reset: counts from 0"),
        pytest.param(None, 4.0, 4.0, id="new series at a known replica: counts from 0"),
    ],
)
def test_counter_increase(previous: float | None, current: float, expected: float) -> None:
    assert metrics.increase(previous=previous, current=current) == expected


def test_window_sums_replicas_and_counts_a_restarted_replica_from_zero(
    gateway_metrics: Any,
) -> None:
    a, b = gateway_metrics(), gateway_metrics()
    a.serve(pool="small", requests=100, inflight=2, escalations={"overflow": (10, 0.1)})
    b.serve(pool="small", requests=50, inflight=1)
    before = {"a": snapshot(0, a), "b": snapshot(0, b)}

    a.serve(pool="small", requests=20, inflight=4, escalations={"overflow": (5, 0.05)})
    b = gateway_metrics()  # replica b restarted: its counters start again at 0
    b.serve(
        pool="small",
        requests=7,
        inflight=3,
        escalations={"overflow": (2, 0.02), "low_confidence": (1, 0.9)},
    )
    after = {"a": snapshot(30, a), "b": snapshot(30, b)}

    result = metrics.window(pool="small", previous=before, current=after, window_seconds=30)

    assert result is not None
    assert result.window_seconds == 30
    assert result.requests == 27
    assert dict(result.escalations) == {"overflow": 7, "low_confidence": 1}
    assert result.overflow_spend_usd == pytest.approx(0.07)
    # Gauge: mean of the two samples per replica, summed: (2+4)/2 + (1+3)/2.
    assert result.avg_inflight == 5


def test_window_counts_an_escalation_reason_seen_for_the_first_time(gateway_metrics: Any) -> None:
    replica = gateway_metrics()
    replica.serve(pool="small", requests=10, inflight=0)
    before = {"a": snapshot(0, replica)}
    replica.serve(pool="small", requests=5, escalations={"overflow": (3, 0.03)})

    result = metrics.window(
        pool="small", previous=before, current={"a": snapshot(30, replica)}, window_seconds=30
    )

    assert result is not None
    assert result.escalations["overflow"] == 3
    assert result.overflow_spend_usd == pytest.approx(0.03)


def test_window_of_a_pool_no_replica_reports_is_all_zero(gateway_metrics: Any) -> None:
    replica = gateway_metrics()
    replica.serve(pool="other", requests=10)
    before = {"a": snapshot(0, replica)}
    result = metrics.window(
        pool="small", previous=before, current={"a": snapshot(30, replica)}, window_seconds=30
    )
    assert result == autoscale.Window(window_seconds=30, requests=0, escalations={})


def test_window_is_none_without_a_replica_in_both_scrapes(gateway_metrics: Any) -> None:
    replica = gateway_metrics()
    replica.serve(pool="small", requests=10)
    assert (
        metrics.window(
            pool="small",
            previous={"a": snapshot(0, replica)},
            current={"b": snapshot(30, replica)},
            window_seconds=30,
        )
        is None
    )
    with pytest.raises(ValueError, match=r"window_seconds=0 \(accepted: > 0\)"):
        metrics.window(pool="small", previous={}, current={}, window_seconds=0)


def test_tracker_spreads_a_missed_scrape_over_the_longer_span(gateway_metrics: Any) -> None:
    a, b = gateway_metrics(), gateway_metrics()
    tracker = autoscale.CounterTracker()
    both = ["a", "b"]

    assert (
        tracker.advance(
            pool="p", at=0, snapshots={"a": snapshot(0, a), "b": snapshot(0, b)}, endpoints=both
        )
        is None
    )
    # Round 2: b does not answer; 60 requests at a, 60 at b over 30 s.
    a.serve(pool="p", requests=60)
    b.serve(pool="p", requests=60)
    second = tracker.advance(pool="p", at=30, snapshots={"a": snapshot(30, a)}, endpoints=both)
    assert second is not None
    assert second.requests == 60
    # Round 3: b answers again with 120 requests over its 60 s span: 60 of them fall
    # in this 30 s window, so b's missed round is neither lost at once nor counted twice.
    a.serve(pool="p", requests=60)
    b.serve(pool="p", requests=60)
    third = tracker.advance(
        pool="p", at=60, snapshots={"a": snapshot(60, a), "b": snapshot(60, b)}, endpoints=both
    )
    assert third is not None
    assert third.requests == 120


def test_tracker_forgets_replicas_that_left_and_waits_out_total_failure(
    gateway_metrics: Any,
) -> None:
    a = gateway_metrics()
    tracker = autoscale.CounterTracker()
    tracker.advance(pool="p", at=0, snapshots={"a": snapshot(0, a)}, endpoints=["a"])
    # Every replica failed: no window (not a window of zero traffic).
    assert tracker.advance(pool="p", at=30, snapshots={}, endpoints=["a"]) is None
    a.serve(pool="p", requests=90)
    # The next answer spans both rounds: the window is 60 s long, nothing lost.
    after = tracker.advance(pool="p", at=60, snapshots={"a": snapshot(60, a)}, endpoints=["a"])
    assert after is not None
    assert (after.window_seconds, after.requests) == (60, 90)
    # Replica a left the endpoints; a new replica c is only a baseline.
    c = gateway_metrics()
    c.serve(pool="p", requests=500)
    assert (
        tracker.advance(pool="p", at=90, snapshots={"c": snapshot(90, c)}, endpoints=["c"]) is None
    )
