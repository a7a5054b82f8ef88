"""The billing rule case by case, through a real gateway and a simulated expert with
scripted faults (docs/ledger.md): what is charged, what is released, and how streams,
Retry-After, cancellation and the breaker behave."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from tests.integration.gateway.conftest import chat, expert_config, gateway_config, gw_free_port

from kascade.gateway import config as config_mod
from kascade.gateway import ledger
from kascade.gateway.experts import escalation, worst_case
from kascade.gateway.route import decision as decision_mod


def _rules(**policy: Any) -> dict[str, Any]:
    return {"rules": [{"when": {}, "action": "expert"}], **policy}


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any, bytes]:
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        return resp.status, resp.headers, await resp.read()


async def _books(gw: Any, name: str = "e1") -> ledger.SpendSnapshot:
    state = gw.state.experts[name]
    return await gw.state.escalator.ledger.snapshot(expert=name, budget=state.budget)


def _worst(record: dict[str, Any]) -> int:
    pricing = config_mod.Pricing(inputPerMillionTokens=1.0, outputPerMillionTokens=2.0)
    return worst_case.bound(body=json.dumps(record["body"]).encode(), pricing=pricing).nanos


async def _until(predicate: Any) -> None:
    deadline = time.monotonic() + 30  # only ends the wait; a loaded CI machine is slow
    while not predicate():  # polls another component's state
        assert time.monotonic() < deadline, "the condition was never reached"
        await asyncio.sleep(0.01)


async def test_a_stream_the_gateway_cuts_ends_with_an_error_and_done_and_is_charged(
    start_sim, start_gateway, http
) -> None:
    expert = await start_sim(name="e1", fault_script="kind=slow_chunks seconds=2")
    timeouts = {"connectSeconds": 1, "requestSeconds": 5, "idleSeconds": 0.2}
    gw = await start_gateway(
        gateway_config(
            pool=expert.url,
            experts={"e1": expert_config(expert.url, timeouts=timeouts)},
            policy=_rules(),
        )
    )
    status, _, raw = await _post(http, gw.url, chat("one two three", stream=True))
    assert status == 200
    events = [e for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == "idle_timeout"
    snap = await _books(gw)
    # No usage arrived: the attempt is charged its worst case, nothing stays reserved.
    assert (snap.spent_nanos, snap.reserved_nanos) == (_worst(expert.records[0]), 0)


async def test_each_attempt_is_charged_and_unbilled_refusals_are_released(
    start_sim, start_gateway, http
) -> None:
    # 500 (may have generated: charged), 429 (refused before generation: released), ok.
    expert = await start_sim(
        name="e1",
        fault_script="kind=status status=500;kind=status status=429 retry_after=0;",
        prompt_tokens=3,
        completion_tokens=4,
    )
    retries = {"maxAttempts": 3, "initialBackoffMillis": 1, "maxBackoffMillis": 10}
    gw = await start_gateway(
        gateway_config(
            pool=expert.url,
            experts={"e1": expert_config(expert.url, retries=retries)},
            policy=_rules(),
        )
    )
    status, headers, _ = await _post(http, gw.url, chat("hello", max_tokens=10))
    assert status == 200
    assert len(expert.records) == 3
    snap = await _books(gw)
    answered = 3 * 1000 + 4 * 2000
    assert snap.spent_nanos == _worst(expert.records[0]) + answered
    assert snap.reserved_nanos == 0
    assert headers["x-kascade-cost-usd"] == decision_mod.usd_text(answered)


async def test_connection_refused_is_released(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool")
    dead = f"http://127.0.0.1:{gw_free_port()}"
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(dead)},
            policy=_rules(fallback={"whenExpertsUnavailable": "error"}),
        )
    )
    status, _, raw = await _post(http, gw.url, chat("hello"))
    assert status == 503
    assert b"e1: connect_failed" in raw
    snap = await _books(gw)
    assert (snap.spent_nanos, snap.reserved_nanos) == (0, 0)


async def test_impossible_usage_is_capped_at_the_reservation_and_counted(
    start_sim, start_gateway, http
) -> None:
    expert = await start_sim(name="e1", fault_script="kind=usage_too_large")
    gw = await start_gateway(
        gateway_config(pool=expert.url, experts={"e1": expert_config(expert.url)}, policy=_rules())
    )
    status, _, _ = await _post(http, gw.url, chat("hello", max_tokens=10))
    assert status == 200
    snap = await _books(gw)
    assert snap.spent_nanos == _worst(expert.records[0])
    metric = gw.state.metrics.usage_above_reservation.labels("e1")
    assert metric._value.get() == 1


async def test_a_year_long_retry_after_is_capped(start_sim, start_gateway, http) -> None:
    expert = await start_sim(name="e1", fault_script="kind=status status=429 retry_after=31536000")
    gw = await start_gateway(
        gateway_config(
            pool=expert.url,
            experts={"e1": expert_config(expert.url, retries={"maxRetryAfterSeconds": 60})},
            policy=_rules(fallback={"whenExpertsUnavailable": "error"}),
        )
    )
    before = time.time()
    status, _, _ = await _post(http, gw.url, chat("hello"))
    assert status == 503
    throttle = await gw.state.escalator.throttle.state(expert="e1")
    assert throttle.blocked_until is not None
    assert before + 59 <= throttle.blocked_until <= time.time() + 60
    assert gw.state.metrics.retry_after_capped.labels("e1")._value.get() == 1


async def test_an_expert_lacking_a_capability_is_skipped(start_sim, start_gateway, http) -> None:
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=expert.url,
            experts={"e1": expert_config(expert.url, capabilities=["chat"])},
            policy=_rules(fallback={"whenExpertsUnavailable": "error"}),
        )
    )
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    status, _, raw = await _post(http, gw.url, chat("hi", tools=tools))
    assert status == 503
    assert b"e1: lacks_tools" in raw
    assert expert.records == []


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_cancelled_call_is_charged_its_worst_case(
    backend: str, start_sim, start_gateway, request: pytest.FixtureRequest
) -> None:
    expert = await start_sim(name="e1", fault_script="kind=slow_headers seconds=30")
    top = {"ledger": {"url": request.getfixturevalue("redis_url")}} if backend == "redis" else {}
    gw = await start_gateway(
        gateway_config(
            pool=expert.url, experts={"e1": expert_config(expert.url)}, policy=_rules(), **top
        )
    )
    state = gw.state.experts["e1"]
    call = escalation.Call(
        request_id="cancel-me",
        messages=[{"role": "user", "content": "hello"}],
        params={},
        requested_max_tokens=20,
        prompt_bound=0,
        prompt_estimate=5,
        raw_personal_data=False,
        max_cost_nanos=None,
    )
    books = gw.state.escalator.ledger
    settling, go_on = asyncio.Event(), asyncio.Event()
    real_settle = books.settle

    async def slow_settle(reservation: ledger.Reservation, *, actual_nanos: int) -> None:
        settling.set()
        await go_on.wait()  # a Redis round trip that takes a while
        await real_settle(reservation, actual_nanos=actual_nanos)

    if backend == "redis":  # (the memory ledger never suspends: nothing to interrupt)
        books.settle = slow_settle  # type: ignore[method-assign]
    task = asyncio.create_task(gw.state.escalator.run(experts=[state], call=call))
    await _until(lambda: expert.records)  # the request reached the provider
    task.cancel()
    if backend == "redis":
        # Cancelled again while settling (a shutdown after a client hang-up): the
        # settlement must run on regardless.
        await settling.wait()
        task.cancel()
        go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await gw.state.escalator.close()  # a shutdown waits for settlements still running
    snap = await _books(gw)
    assert (snap.spent_nanos, snap.reserved_nanos) == (_worst(expert.records[0]), 0)


async def test_a_half_open_trial_is_returned_when_the_client_hangs_up(
    start_sim, start_gateway, http
) -> None:
    expert = await start_sim(
        name="e1", fault_script="kind=status status=500;kind=slow_chunks seconds=0.3;;"
    )
    breaker_cfg = {"failureThreshold": 1, "openSeconds": 0.05, "halfOpenMaxRequests": 1}
    gw = await start_gateway(
        gateway_config(
            pool=expert.url,
            experts={"e1": expert_config(expert.url, circuitBreaker=breaker_cfg)},
            policy=_rules(fallback={"whenExpertsUnavailable": "error"}),
        )
    )
    breaker = gw.state.experts["e1"].breaker
    status, _, _ = await _post(http, gw.url, chat("fail"))
    assert status == 503
    await _until(lambda: breaker.state == "half-open")
    # The trial call streams slowly; the client reads one chunk and hangs up.
    async with http.post(
        f"{gw.url}/v1/chat/completions", json=chat("a b c d e f", stream=True)
    ) as resp:
        await resp.content.readline()
    await _until(lambda: breaker.trials_in_use == 0)
    assert breaker.state == "half-open"
    status, _, _ = await _post(http, gw.url, chat("next"))
    assert status == 200
    assert len(expert.records) == 3


async def test_readyz_reflects_the_ledger_and_reports_pools(start_sim, start_gateway, http) -> None:
    expert = await start_sim(name="e1")
    healthy = await start_gateway(
        gateway_config(pool=expert.url, experts={"e1": expert_config(expert.url)}), name="ok"
    )
    async with http.get(f"{healthy.url}/readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "ready": True,
            "config": True,
            "ledger": True,
            "pools": {"small": True},
        }
    dead = f"redis://127.0.0.1:{gw_free_port()}/0"
    no_ledger = await start_gateway(
        gateway_config(
            pool=f"http://127.0.0.1:{gw_free_port()}",
            experts={"e1": expert_config(expert.url)},
            ledger={"url": dead},
        ),
        name="no-ledger",
    )
    async with http.get(f"{no_ledger.url}/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert (body["ledger"], body["pools"]) == (False, {"small": False})
