"""Tenant budgets on the same exact ledger as expert budgets: two tenants, two real
gateway processes, one real Redis; and two namespaces sharing that Redis."""

from __future__ import annotations

import asyncio
import collections
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests import tenant_support
from tests.integration.gateway.conftest import chat, gateway_config, gw_wait_for_http
from tests.integration.gateway.test_gateway_budgets import (
    BOUND,
    MAX_TOKENS,
    PROMPT,
    WORST_NANOS,
    _budget_expert,
    _records,
    _start_gateway_process,
    _start_sim_process,
)

REQUESTS = 300


def _usd(worst_cases: int) -> Decimal:
    return Decimal(worst_cases * WORST_NANOS) / Decimal(10**9)


async def _fire(
    http: aiohttp.ClientSession, calls: list[tuple[str, str]]
) -> list[tuple[int, Any, Any]]:
    gate = asyncio.Event()

    async def one(url: str, key: str) -> tuple[int, Any, Any]:
        await gate.wait()
        body = chat(PROMPT, max_tokens=MAX_TOKENS)
        headers = {"authorization": f"Bearer {key}"}
        async with http.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
            return r.status, r.headers.copy(), await r.json(content_type=None)

    tasks = [asyncio.create_task(one(url, key)) for url, key in calls]
    # One loop turn runs each new task to its first await: all wait at the gate now.
    await asyncio.sleep(0)
    gate.set()  # released together
    return await asyncio.gather(*tasks)


async def _status(http: aiohttp.ClientSession, url: str, key: str) -> dict[str, Any]:
    async with http.get(
        f"{url}/v1/kascade/status", headers={"authorization": f"Bearer {key}"}
    ) as r:
        doc: dict[str, Any] = await r.json()
        return doc


@pytest.mark.redis
async def test_two_tenants_spend_their_own_limits_exactly(
    redis_url: str, tmp_path: Path, http
) -> None:
    keys = {"team-a": tenant_support.new_key("a"), "team-b": tenant_support.new_key("b")}
    for name, key in keys.items():
        tenant_support.write_secret_dir(tmp_path / name, {"k": key})
    tenants = {
        # 40 + 60 worst cases: together exactly the expert's 100, so all three books fill.
        "team-a": tenant_support.tenant(
            tmp_path / "team-a", budget={"limitUSD": float(_usd(40)), "window": "calendar-day"}
        ),
        "team-b": tenant_support.tenant(
            tmp_path / "team-b",
            budget={"limitUSD": float(_usd(60)), "onExhausted": "fallback-local"},
        ),
    }
    pool_url, pool_ctx, _ = _start_sim_process(tmp_path, "pool", "--confidence", "0.1")
    e1_url, e1_ctx, e1_record = _start_sim_process(
        tmp_path,
        "e1",
        "--latency-ms",
        "50",
        "--prompt-tokens",
        str(BOUND.prompt_tokens),
        "--completion-tokens",
        str(BOUND.completion_tokens),
    )
    config = gateway_config(
        pool=pool_url,
        experts={"e1": _budget_expert(e1_url)},  # 100 worst cases
        ledger={"url": redis_url},
        tenants=tenants,
    )
    a_url, a_ctx = _start_gateway_process(tmp_path, "gw-a", config)
    b_url, b_ctx = _start_gateway_process(tmp_path, "gw-b", config)
    urls = [a_url, b_url]
    calls = [(urls[i % 2], keys["team-a" if (i // 2) % 2 else "team-b"]) for i in range(REQUESTS)]
    with pool_ctx, e1_ctx, a_ctx, b_ctx:
        for url in (pool_url, e1_url, a_url, b_url):
            await asyncio.to_thread(gw_wait_for_http, url + "/healthz")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as many:
            results = await _fire(many, calls)
        outcome = collections.Counter(
            (h["x-kascade-tenant"], status, h.get("x-kascade-route")) for status, h, _ in results
        )
        why = collections.Counter(h.get("x-kascade-degraded", "")[-70:] for _, h, _ in results)
        assert outcome == {
            ("team-a", 200, "expert:e1"): 40,
            ("team-a", 429, "error"): 110,
            ("team-b", 200, "expert:e1"): 60,
            ("team-b", 200, "local"): 90,
        }, (outcome, why)
        refusals = [b for s, _, b in results if s == 429]
        assert {b["error"]["code"] for b in refusals} == {"tenant_budget_exhausted"}
        assert "Tenant `team-a` has spent its budget" in refusals[0]["error"]["message"]
        assert len([r for r in _records(e1_record) if r["outcome"] == "ok"]) == 100
        doc = await _status(http, b_url, keys["team-a"])
        assert doc["tenants"]["team-a"]["budget"]["spentUSD"] == str(_usd(40))
        assert doc["tenants"]["team-b"]["budget"]["spentUSD"] == str(_usd(60))
        assert doc["experts"]["e1"]["budget"]["spentUSD"] == str(_usd(100))
        for entry in (*doc["tenants"].values(), doc["experts"]["e1"]):
            assert entry["budget"]["reservedUSD"] == "0"


@pytest.mark.redis
async def test_two_namespaces_with_same_names_spend_independently(
    redis_url: str, start_sim, start_gateway, tmp_path: Path, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    # It reports the full worst case as usage, so settling frees nothing.
    expert = await start_sim(
        name="e1", prompt_tokens=BOUND.prompt_tokens, completion_tokens=BOUND.completion_tokens
    )
    key = tenant_support.new_key("t")
    tenant_support.write_secret_dir(tmp_path / "t", {"k": key})
    tenant = tenant_support.tenant(tmp_path / "t", budget={"limitUSD": float(_usd(2))})
    gateways = {}
    for ns in ("ns-one", "ns-two"):
        config = gateway_config(
            pool=pool.url,
            experts={"e1": _budget_expert(expert.url)},
            ledger={"url": redis_url},
            tenants={"t": tenant},
            namespace=ns,
        )
        gateways[ns] = await start_gateway(config, name=ns)
    auth = {"authorization": f"Bearer {key}"}
    body = chat(PROMPT, max_tokens=MAX_TOKENS)

    async def ask(ns: str) -> int:
        async with http.post(
            f"{gateways[ns].url}/v1/chat/completions", json=body, headers=auth
        ) as r:
            return r.status

    assert [await ask("ns-one") for _ in range(3)] == [200, 200, 429]
    # Same expert name, same tenant name, same Redis: ns-two's books are its own.
    assert [await ask("ns-two") for _ in range(3)] == [200, 200, 429]
    for gw in gateways.values():
        doc = await _status(http, gw.url, key)
        assert doc["tenants"]["t"]["budget"]["spentUSD"] == str(_usd(2))
        assert doc["experts"]["e1"]["budget"]["spentUSD"] == str(_usd(2))
