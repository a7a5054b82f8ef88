"""Confidence reading, the dynamic threshold formula, the circuit breaker, rules and
request validation."""

from __future__ import annotations

import json
import math

import pytest

from kascade.gateway import config
from kascade.gateway.endpoints import errors
from kascade.gateway.experts import breaker
from kascade.gateway.route import confidence, pressure, request, rules


def test_confidence_from_body_header_or_logprobs() -> None:
    assert confidence.extract(body={"confidence": 0.8}, headers={}, method="margin") == 0.8
    by_method = {"confidence": {"mean_token_prob": 0.7, "min_token_prob": 0.2}}
    assert confidence.extract(body=by_method, headers={}, method="min-token-prob") == 0.2
    assert confidence.extract(body={}, headers={"x-kascade-confidence": "0.55"}, method="x") == 0.55
    assert confidence.extract(body={"confidence": 7}, headers={}, method="x") is None
    tokens = [
        {
            "logprob": math.log(0.9),
            "top_logprobs": [{"logprob": math.log(0.9)}, {"logprob": math.log(0.05)}],
        },
        {
            "logprob": math.log(0.5),
            "top_logprobs": [{"logprob": math.log(0.5)}, {"logprob": math.log(0.4)}],
        },
    ]
    body = {"choices": [{"logprobs": {"content": tokens}}]}
    assert confidence.extract(body=body, headers={}, method="mean-token-prob") == pytest.approx(0.7)
    assert confidence.extract(body=body, headers={}, method="min-token-prob") == pytest.approx(0.5)
    assert confidence.extract(body=body, headers={}, method="margin") == pytest.approx(
        (0.85 + 0.1) / 2
    )


def _conf(**dynamic: float) -> config.ConfidenceConfig:
    return config.ConfidenceConfig(
        threshold=0.6,
        dynamic=config.DynamicThreshold(minThreshold=0.4, maxThreshold=0.8, **dynamic),
    )


def test_dynamic_threshold_formula() -> None:
    c = _conf(budgetPressure=1.0)
    # On pace, all experts up: the base threshold.
    assert confidence.threshold(confidence=c, burn=1.0, unavailable_fraction=0) == pytest.approx(
        0.6
    )
    # Burning 1.5x the pace: p = 0.5, halfway down to minThreshold (fewer escalations).
    assert confidence.threshold(confidence=c, burn=1.5, unavailable_fraction=0) == pytest.approx(
        0.5
    )
    # Way over pace or every expert down: clamped at minThreshold.
    assert confidence.threshold(confidence=c, burn=9, unavailable_fraction=0) == pytest.approx(0.4)
    assert confidence.threshold(confidence=c, burn=1.0, unavailable_fraction=1) == pytest.approx(
        0.4
    )
    # Half the pace: p = -0.5, halfway up to maxThreshold (use the unspent budget).
    assert confidence.threshold(confidence=c, burn=0.5, unavailable_fraction=0) == pytest.approx(
        0.7
    )
    assert confidence.threshold(confidence=c, burn=0.0, unavailable_fraction=0) == pytest.approx(
        0.8
    )
    # Unknown burn: only availability counts.
    assert confidence.threshold(confidence=c, burn=None, unavailable_fraction=0.5) == pytest.approx(
        0.5
    )
    static = config.ConfidenceConfig(threshold=0.65)
    assert confidence.threshold(confidence=static, burn=5, unavailable_fraction=1) == 0.65


def test_budget_pressure_one_reaches_min_threshold_at_twice_the_pace() -> None:
    """budgetPressure 1 (docs/api.md): on pace keeps the base threshold, twice the pace
    (budget gone half-way through the window) reaches minThreshold, no spend
    maxThreshold. Six hours into a calendar day, a quarter of the window has passed."""
    c = _conf(budgetPressure=1.0)
    elapsed = pressure.elapsed_fraction(window="calendar-day", window_start=0, now=6 * 3600)

    def at(used_fraction: float) -> float:
        burn = used_fraction / elapsed
        return confidence.threshold(confidence=c, burn=burn, unavailable_fraction=0)

    assert at(0.25) == pytest.approx(0.6)  # on pace: spends exactly the budget by midnight
    assert at(0.5) == pytest.approx(0.4)  # would be exhausted at noon
    assert at(0.0) == pytest.approx(0.8)
    assert 0.4 < at(0.375) < 0.6  # 1.5x the pace: on the way down, not yet at the floor


def test_circuit_breaker_states() -> None:
    now = [100.0]
    b = breaker.CircuitBreaker(
        config=config.CircuitBreakerConfig(
            failureThreshold=2, openSeconds=0.05, halfOpenMaxRequests=2
        ),
        clock=lambda: now[0],
    )
    assert b.allow()
    assert b.state == "closed"
    b.record_failure()
    b.record_success()  # success resets the count
    b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open"
    assert not b.allow()
    assert not b.available()
    now[0] += 0.04
    assert b.state == "open"  # not before openSeconds
    now[0] += 0.02
    assert b.state == "half-open"
    first, second = _probe(b), _probe(b)
    assert not b.allow()
    first.success()
    assert b.state == "half-open"  # halfOpenProbes=2: one success is not enough
    second.success()
    assert b.state == "closed"
    b.record_failure()
    b.record_failure()
    now[0] += 0.06
    assert b.allow()
    b.record_failure()  # a failed trial re-opens at once
    assert b.state == "open"


def _half_open_breaker(now: list[float], probes: int) -> breaker.CircuitBreaker:
    b = breaker.CircuitBreaker(
        config=config.CircuitBreakerConfig(
            failureThreshold=1, openSeconds=10, halfOpenMaxRequests=probes
        ),
        clock=lambda: now[0],
    )
    b.record_failure()
    now[0] += 10
    assert b.state == "half-open"
    return b


def _probe(b: breaker.CircuitBreaker) -> breaker.Slot:
    slot = b.acquire()
    assert slot is not None
    return slot


def test_half_open_probes_successes_close_the_circuit() -> None:
    """halfOpenProbes: 3 — 'Successful probe calls needed to close the circuit again.'"""
    now = [100.0]
    b = _half_open_breaker(now, probes=3)
    _probe(b).success()
    assert b.state == "half-open"
    _probe(b).success()
    assert b.state == "half-open"
    _probe(b).success()
    assert b.state == "closed"


def test_half_open_failure_between_probes_reopens() -> None:
    now = [100.0]
    b = _half_open_breaker(now, probes=3)
    _probe(b).success()
    _probe(b).success()
    _probe(b).failure()
    assert b.state == "open"
    assert not b.available()
    now[0] += 10  # a new half-open period starts from zero successes
    _probe(b).success()
    assert b.state == "half-open"


def test_half_open_trials_never_exceed_the_probes_still_needed() -> None:
    now = [100.0]
    b = _half_open_breaker(now, probes=3)
    first, second = _probe(b), _probe(b)
    first.success()
    last = _probe(b)  # in flight plus succeeded: 3
    assert b.acquire() is None
    second.release()  # ended without a report: its trial comes back
    again = _probe(b)
    assert b.acquire() is None
    last.success()
    again.success()
    assert b.state == "closed"


def test_a_success_from_before_the_circuit_opened_is_not_a_probe() -> None:
    now = [100.0]
    b = breaker.CircuitBreaker(
        config=config.CircuitBreakerConfig(
            failureThreshold=1, openSeconds=10, halfOpenMaxRequests=1
        ),
        clock=lambda: now[0],
    )
    stale = _probe(b)  # let through while closed
    b.record_failure()
    now[0] += 10
    stale.success()
    assert b.state == "half-open"
    _probe(b).success()
    assert b.state == "closed"


def test_rules_first_match_wins() -> None:
    rule_list = [
        config.Rule(
            when=config.RuleWhen(minPromptTokens=101, taskLabels=["code"]), action="expert"
        ),
        config.Rule(
            when=config.RuleWhen(header=config.HeaderMatch(name="x-a", values=["1"])),
            action="local",
        ),
    ]
    assert (
        rules.match(rules=rule_list, prompt_tokens=200, headers={"x-kascade-task": "code"})[0] == 0
    )  # type: ignore[index]
    assert rules.match(rules=rule_list, prompt_tokens=200, headers={}) is None
    assert rules.match(rules=rule_list, prompt_tokens=5, headers={"x-a": "1"})[0] == 1  # type: ignore[index]


def test_request_parse_bounds_prompt_tokens_by_bytes() -> None:
    raw = json.dumps(
        {"model": "p", "messages": [{"role": "user", "content": "héllo"}], "max_tokens": 9}
    )
    chat = request.parse(raw.encode())
    assert chat.prompt_bound == 16 + 8 + len("héllo".encode())
    assert chat.max_tokens == 9
    assert chat.stream is False


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "p", "messages": []}, "messages"),
        ({"model": "p", "messages": ["x"]}, "messages[0]"),
        ({"model": "p", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"model": "p", "messages": [{"role": "user", "content": "x"}], "top_p": True}, "top_p"),
        (
            {"model": "p", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
        ),
    ],
)
def test_request_errors_name_the_param(body: dict[str, object], param: str) -> None:
    with pytest.raises(errors.ApiError) as info:
        request.parse(json.dumps(body).encode())
    assert info.value.status == 400
    assert info.value.param == param
    assert json.loads(info.value.body())["error"]["param"] == param
