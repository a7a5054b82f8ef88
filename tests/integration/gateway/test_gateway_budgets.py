"""Exact budgets and global throttles under concurrency: one process with the memory
ledger, and two real gateway processes sharing one real Redis."""

from __future__ import annotations

import asyncio
import collections
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.integration.gateway.conftest import (
    chat,
    expert_config,
    gateway_config,
    gw_free_port,
    gw_wait_for_http,
    process,
)

from kascade.gateway import config as config_mod
from kascade.gateway.experts import providers, worst_case

PROMPT = "q" * 26
MAX_TOKENS = 50


def _bound() -> worst_case.Bound:
    """The worst case the gateway reserves: over the body it sends (bytes x $1/M +
    max_tokens x $2/M), built here by the same adapter from the same config."""
    cfg = config_mod.ExpertConfig.model_validate(expert_config("http://127.0.0.1:1"))
    outbound = providers.build_request(
        expert=cfg,
        api_key=None,
        messages=chat(PROMPT)["messages"],
        params={},
        max_tokens=MAX_TOKENS,
        stream=False,
    )
    return worst_case.bound(body=outbound.body, pricing=cfg.pricing)


BOUND = _bound()
WORST_NANOS = BOUND.nanos
LIMIT_USD = Decimal(100 * WORST_NANOS) / Decimal(10**9)  # exactly 100 worst cases
REQUESTS = 300


def _budget_expert(url: str, **extra: Any) -> dict[str, Any]:
    return expert_config(
        url, budget={"limitUSD": float(LIMIT_USD), "window": "calendar-day"}, **extra
    )


async def _fire(http: aiohttp.ClientSession, urls: list[str], n: int) -> list[tuple[int, Any]]:
    gate = asyncio.Event()

    async def one(i: int) -> tuple[int, Any]:
        await gate.wait()
        body = chat(PROMPT, max_tokens=MAX_TOKENS)
        async with http.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=body) as resp:
            await resp.read()
            return resp.status, resp.headers.copy()

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    # One loop turn runs each new task to its first await: all wait at the gate now.
    await asyncio.sleep(0)
    gate.set()  # released together
    return await asyncio.gather(*tasks)


def _check_outcomes(results: list[tuple[int, Any]], *, expert_calls: int) -> None:
    summary = collections.Counter(
        (status, h.get("x-kascade-route"), h.get("x-kascade-degraded", "")[-60:])
        for status, h in results
    )
    assert all(status == 200 for status, _ in results), summary
    escalated = [h for _, h in results if h["x-kascade-route"] == "expert:e1"]
    fallback = [h for _, h in results if h["x-kascade-route"] == "local"]
    assert len(escalated) == expert_calls == 100, (expert_calls, summary)
    assert len(fallback) == REQUESTS - 100
    for h in fallback:  # the documented fallback: degraded local answer with the reason
        assert "e1: budget_exhausted" in h["x-kascade-degraded"]
        assert h["x-kascade-cost-usd"] == "0"


async def _spent(http: aiohttp.ClientSession, url: str) -> Decimal:
    async with http.get(f"{url}/v1/kascade/status") as resp:
        doc = await resp.json()
    budget = doc["experts"]["e1"]["budget"]
    assert budget["reservedUSD"] == "0"
    return Decimal(budget["spentUSD"])


async def test_memory_ledger_admits_exactly_the_budget(
    start_sim, start_gateway, http, tmp_path
) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    # The expert reports the full worst case as usage, so settling frees nothing.
    expert = await start_sim(
        name="e1",
        latency_ms=100,
        prompt_tokens=BOUND.prompt_tokens,
        completion_tokens=BOUND.completion_tokens,
    )
    config = gateway_config(
        pool=pool.url,
        experts={"e1": _budget_expert(expert.url)},
        ledger={"checkpointPath": str(tmp_path / "spend.json")},
    )
    gw = await start_gateway(config)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as many:
        results = await _fire(many, [gw.url], REQUESTS)
    _check_outcomes(results, expert_calls=len(expert.records))
    assert await _spent(http, gw.url) == LIMIT_USD
    # Restart: a new gateway on the same checkpoint still sees the spend.
    await gw.app.shutdown()
    await gw.app.cleanup()
    gw2 = await start_gateway(config, name="gw2")
    assert await _spent(http, gw2.url) == LIMIT_USD
    async with http.post(
        f"{gw2.url}/v1/chat/completions", json=chat(PROMPT, max_tokens=MAX_TOKENS)
    ) as resp:
        assert "budget_exhausted" in resp.headers["x-kascade-degraded"]
    assert len(expert.records) == 100


def _start_sim_process(tmp: Path, name: str, *args: str) -> tuple[str, Any, Path]:
    port = gw_free_port()
    record = tmp / f"{name}.jsonl"
    ctx = process(
        [
            "-m",
            "kascade.simexpert",
            "--port",
            str(port),
            "--name",
            name,
            "--record",
            str(record),
            *args,
        ],
        log=tmp / f"{name}.log",
    )
    return f"http://127.0.0.1:{port}", ctx, record


def _start_gateway_process(tmp: Path, name: str, config: dict[str, Any]) -> tuple[str, Any]:
    port = gw_free_port()
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(config))
    ctx = process(
        [
            "-m",
            "kascade.gateway.endpoints.server",
            "--config",
            str(path),
            "--port",
            str(port),
            "--audit-log",
            str(tmp / f"{name}-audit.jsonl"),
            "--log-level",
            "WARNING",
        ],
        log=tmp / f"{name}.log",
    )
    return f"http://127.0.0.1:{port}", ctx


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.redis
async def test_two_gateways_share_one_redis_budget(redis_url: str, tmp_path: Path, http) -> None:
    pool_url, pool_ctx, _ = _start_sim_process(tmp_path, "pool", "--confidence", "0.1")
    e1_url, e1_ctx, e1_record = _start_sim_process(
        tmp_path,
        "e1",
        "--latency-ms",
        "100",
        "--prompt-tokens",
        str(BOUND.prompt_tokens),
        "--completion-tokens",
        str(BOUND.completion_tokens),
    )
    config = gateway_config(
        pool=pool_url, experts={"e1": _budget_expert(e1_url)}, ledger={"url": redis_url}
    )
    a_url, a_ctx = _start_gateway_process(tmp_path, "gw-a", config)
    b_url, b_ctx = _start_gateway_process(tmp_path, "gw-b", config)
    with pool_ctx, e1_ctx, a_ctx, b_ctx:
        for url in (pool_url, e1_url, a_url, b_url):
            await asyncio.to_thread(gw_wait_for_http, url + "/healthz")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as many:
            results = await _fire(many, [a_url, b_url], REQUESTS)
        calls = [r for r in _records(e1_record) if r["outcome"] == "ok"]
        _check_outcomes(results, expert_calls=len(calls))
        assert await _spent(http, a_url) == LIMIT_USD
        assert await _spent(http, b_url) == LIMIT_USD
        # Both replicas admitted some of the 100: the budget really is shared.
        routes = {
            url: sum(
                1
                for i, (_, h) in enumerate(results)
                if i % 2 == k and h["x-kascade-route"] == "expert:e1"
            )
            for k, url in enumerate((a_url, b_url))
        }
        assert all(n > 0 for n in routes.values()), routes
    # Restart: Redis keeps the spend.
    c_url, c_ctx = _start_gateway_process(tmp_path, "gw-c", config)
    with c_ctx:
        await asyncio.to_thread(gw_wait_for_http, c_url + "/healthz")
        assert await _spent(http, c_url) == LIMIT_USD


@pytest.mark.redis
async def test_two_gateways_share_a_60_rpm_throttle(redis_url: str, tmp_path: Path, http) -> None:
    pool_url, pool_ctx, _ = _start_sim_process(tmp_path, "pool", "--confidence", "0.1")
    e1_url, e1_ctx, e1_record = _start_sim_process(tmp_path, "e1", "--latency-ms", "5")
    config = gateway_config(
        pool=pool_url,
        experts={"e1": expert_config(e1_url, rateLimits={"requestsPerMinute": 60})},
        ledger={"url": redis_url},
    )
    a_url, a_ctx = _start_gateway_process(tmp_path, "gw-a", config)
    b_url, b_ctx = _start_gateway_process(tmp_path, "gw-b", config)
    with pool_ctx, e1_ctx, a_ctx, b_ctx:
        for url in (pool_url, e1_url, a_url, b_url):
            await asyncio.to_thread(gw_wait_for_http, url + "/healthz")
        results: list[tuple[int, Any]] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as many:
            for _ in range(5):  # 5 waves of 30, each answered before the next starts
                results += await _fire(many, [a_url, b_url], 30)
        calls = _records(e1_record)
        times = sorted(r["t"] for r in calls)
        # Every expert call happened within one minute, so the count IS the count of
        # calls in that minute: it must not exceed the limit.
        assert times[-1] - times[0] < 60
        assert len(calls) == 60
        throttled = [h for _, h in results if h["x-kascade-route"] == "local"]
        assert len(throttled) == 150 - 60
        assert all(
            "e1: throttled_requests_per_minute" in h["x-kascade-degraded"] for h in throttled
        )
