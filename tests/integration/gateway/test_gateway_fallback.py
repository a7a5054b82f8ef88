"""Failure behaviour: 500s, 429s and timeouts move to the next expert, then to a
degraded local answer; circuit breakers open and half-open; the ledger fails closed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from tests.integration.gateway.conftest import (
    chat,
    expert_config,
    gateway_config,
    gw_free_port,
)

from kascade.gateway.experts import breaker

# How long the "slow" simulated expert hangs: far beyond any request timeout in these
# tests, so reaching the next expert at all proves the hang was cut off.
HANG_S = 300.0


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any, Any]:
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        return resp.status, resp.headers.copy(), await resp.json(content_type=None)


async def test_500_429_timeout_each_fall_through_to_the_next_expert(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    broken = await start_sim(name="broken", fail_every=1)
    limited = await start_sim(name="limited", throttle_every=1, retry_after=30)
    # Hangs far longer than the whole test may take: the answer can only come back if the
    # request timeout (0.3 s) cut the hang off.
    slow = await start_sim(name="slow", hang_every=1, hang_seconds=HANG_S)
    good = await start_sim(name="good")
    experts = {
        "broken": expert_config(broken.url, retries={"maxAttempts": 3, "initialBackoffMillis": 5}),
        "limited": expert_config(limited.url, retries={"maxAttempts": 3}),
        "slow": expert_config(slow.url, timeouts={"requestSeconds": 0.3}),
        "good": expert_config(good.url),
    }
    gw = await start_gateway(gateway_config(pool=pool.url, experts=experts))
    try:
        async with asyncio.timeout(HANG_S / 2):  # only turns a hang into a clear failure
            status, headers, _body = await _post(http, gw.url, chat("help"))
    except TimeoutError:
        pytest.fail("the gateway waited for the hanging expert instead of timing it out")
    assert status == 200
    assert headers["x-kascade-route"] == "expert:good"
    # 500 is retryable: all 3 attempts used. 429 with Retry-After 30s (> maxBackoff):
    # no retry, move on. The hang is cut by the request timeout.
    assert len(broken.records) == 3
    assert len(limited.records) == 1
    assert len(slow.records) == 1
    [line] = gw.audit()
    assert [a["outcome"] for a in line["attempts"]] == ["http_500", "http_429", "timeout", "ok"]
    # The 429's Retry-After blocks that expert for every replica (throttle.block_until).
    await _post(http, gw.url, chat("again"))
    assert len(limited.records) == 1
    assert gw.audit()[-1]["attempts"][1] == {"expert": "limited", "outcome": "throttled_upstream"}


async def test_non_retryable_4xx_is_not_retried(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    bad = await start_sim(name="bad", fail_every=1, fail_status=400)
    gw = await start_gateway(
        gateway_config(
            pool=pool.url, experts={"bad": expert_config(bad.url, retries={"maxAttempts": 4})}
        )
    )
    status, headers, _ = await _post(http, gw.url, chat("x"))
    assert status == 200
    assert "x-kascade-degraded" in headers
    assert len(bad.records) == 1


async def test_no_expert_left_gives_degraded_local_answer_or_error(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    broken = await start_sim(name="broken", fail_every=1)
    experts = {"broken": expert_config(broken.url)}
    policy = {"fallback": {"message": "Answered locally: experts down."}}
    gw = await start_gateway(gateway_config(pool=pool.url, experts=experts, policy=policy))
    status, headers, body = await _post(http, gw.url, chat("hard question"))
    assert status == 200
    assert headers["x-kascade-route"] == "local"
    assert headers["x-kascade-reason"] == "low_confidence"
    # fallback.message (docs/api.md): at the start of x-kascade-degraded, then each expert.
    assert headers["x-kascade-degraded"].startswith("Answered locally: experts down. (")
    assert "broken: http_500" in headers["x-kascade-degraded"]
    assert body["choices"][0]["message"]["content"] == "[pool] hard question"
    assert headers["x-kascade-cost-usd"] == "0"
    gw2 = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts=experts,
            policy={
                "fallback": {"whenExpertsUnavailable": "error", "message": "Experts are down."}
            },
        ),
        name="gw2",
    )
    status, headers, body = await _post(http, gw2.url, chat("hard question"))
    assert status == 503
    assert body["error"]["code"] == "experts_unavailable"
    assert body["error"]["message"].startswith("Experts are down. (broken: http_500")


async def _circuit(http: aiohttp.ClientSession, url: str, expert: str) -> str:
    async with http.get(f"{url}/v1/kascade/status") as resp:
        return str((await resp.json())["experts"][expert]["circuit"]["state"])


class FakeClock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _breaker_on(gw: Any, expert: str, clock: FakeClock) -> None:
    """Gives the expert a fresh breaker (same config) that reads ``clock``."""
    state = gw.state.experts[expert]
    state.breaker = breaker.CircuitBreaker(config=state.config.circuit_breaker, clock=clock)


OPEN_SECONDS = 30


async def test_circuit_opens_then_half_opens(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    flaky = await start_sim(name="flaky", fail_every=1)
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={
                "flaky": expert_config(
                    flaky.url,
                    circuitBreaker={
                        "failureThreshold": 3,
                        "openSeconds": OPEN_SECONDS,
                        "halfOpenMaxRequests": 1,
                    },
                )
            },
        )
    )
    # The breaker's time moves only here, so "open" lasts exactly openSeconds however
    # slowly the machine runs.
    clock = FakeClock()
    _breaker_on(gw, "flaky", clock)
    for _ in range(3):
        await _post(http, gw.url, chat("x"))
    assert len(flaky.records) == 3
    # Open: not called, the attempt says why.
    _, headers, _ = await _post(http, gw.url, chat("x"))
    assert len(flaky.records) == 3
    assert "flaky: circuit_open" in headers["x-kascade-degraded"]
    clock.now += OPEN_SECONDS - 1
    assert await _circuit(http, gw.url, "flaky") == "open"
    clock.now += 1  # openSeconds passed
    assert await _circuit(http, gw.url, "flaky") == "half-open"
    # Half-open: one trial; it fails, so the circuit re-opens at once.
    await _post(http, gw.url, chat("x"))
    assert len(flaky.records) == 4
    await _post(http, gw.url, chat("x"))
    assert len(flaky.records) == 4
    assert await _circuit(http, gw.url, "flaky") == "open"
    clock.now += OPEN_SECONDS
    assert await _circuit(http, gw.url, "flaky") == "half-open"
    # Half-open again; the expert has recovered: the trial succeeds and closes it.
    flaky.set(fail_every=0)
    _status, headers, _ = await _post(http, gw.url, chat("x"))
    assert headers["x-kascade-route"] == "expert:flaky"
    assert await _circuit(http, gw.url, "flaky") == "closed"


async def test_unreachable_ledger_fails_closed(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    expert = await start_sim(name="e1")
    dead = f"redis://127.0.0.1:{gw_free_port()}/0"
    gw = await start_gateway(
        gateway_config(
            pool=pool.url, experts={"e1": expert_config(expert.url)}, ledger={"url": dead}
        )
    )
    status, headers, _body = await _post(http, gw.url, chat("x"))
    assert status == 200
    assert headers["x-kascade-route"] == "local"
    assert "ledger is unreachable" in headers["x-kascade-degraded"]
    assert expert.records == []


async def test_dynamic_threshold_drops_when_experts_are_down(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.5)
    flaky = await start_sim(name="flaky", fail_every=1)
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={
                "flaky": expert_config(
                    flaky.url, circuitBreaker={"failureThreshold": 1, "openSeconds": 60}
                )
            },
            policy={
                "confidence": {
                    "threshold": 0.6,
                    "dynamic": {"minThreshold": 0.3, "maxThreshold": 0.9, "budgetPressure": 0},
                }
            },
        )
    )
    # All experts up: the base threshold 0.6, so confidence 0.5 escalates (and fails).
    _, headers, _ = await _post(http, gw.url, chat("first"))
    assert headers["x-kascade-reason"] == "low_confidence"
    assert "x-kascade-degraded" in headers
    # The circuit is open now: every expert is unavailable, the threshold in force falls
    # to minThreshold and the same confidence is good enough locally.
    _, headers, _ = await _post(http, gw.url, chat("second"))
    assert headers["x-kascade-reason"] == "confident"
    assert "x-kascade-degraded" not in headers
    assert [line["threshold"] for line in gw.audit()] == [0.6, 0.3]
    assert len(flaky.records) == 1


@pytest.mark.redis
async def test_upstream_retry_after_blocks_every_replica(
    start_sim, start_gateway, http, redis_url: str
) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    limited = await start_sim(name="limited", throttle_every=1, retry_after=30)
    config = gateway_config(
        pool=pool.url,
        experts={"limited": expert_config(limited.url)},
        ledger={"url": redis_url},
    )
    a = await start_gateway(config, name="a")
    b = await start_gateway(config, name="b")
    _, headers, _ = await _post(http, a.url, chat("x"))
    assert "limited: http_429" in headers["x-kascade-degraded"]
    # Replica b never called the expert: the Retry-After is shared through Redis.
    _, headers, _ = await _post(http, b.url, chat("y"))
    assert "limited: throttled_upstream" in headers["x-kascade-degraded"]
    assert len(limited.records) == 1
    async with http.get(f"{b.url}/v1/kascade/status") as resp:
        blocked = (await resp.json())["experts"]["limited"]["throttle"]["blockedUntil"]
    assert blocked > time.time() + 20


async def test_streamed_request_falls_back_to_a_degraded_local_stream(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    broken = await start_sim(name="broken", fail_every=1)
    gw = await start_gateway(
        gateway_config(pool=pool.url, experts={"broken": expert_config(broken.url)})
    )
    async with http.post(
        f"{gw.url}/v1/chat/completions", json=chat("stream please", stream=True)
    ) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert "broken: http_500" in resp.headers["x-kascade-degraded"]
        body = await resp.text()
    assert '"content": "[pool] stream please"' in body
    assert body.rstrip().endswith("data: [DONE]")
    assert len(broken.records) == 1
    assert broken.records[0]["body"]["stream"] is True
