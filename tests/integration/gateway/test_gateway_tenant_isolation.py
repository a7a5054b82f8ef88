"""Per-tenant isolation in one gateway: caches partitioned per tenant by default (tenant B
never receives an answer cached for tenant A: exact, semantic, and the exact store shared
through Redis; `cache.sharedAcrossTenants` opts in), rate limits and confidence offsets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests import tenant_support
from tests.integration.gateway.conftest import chat, expert_config, gateway_config


async def _ask(
    http: aiohttp.ClientSession, url: str, key: str, text: str, model: str = "default"
) -> str:
    body = {**chat(text), "model": model}
    headers = {"authorization": f"Bearer {key}"}
    async with http.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        route: str = r.headers["x-kascade-route"]
        return route


@pytest.mark.redis
async def test_tenant_never_gets_another_tenants_cached_answer(
    start_sim, start_gateway, tmp_path: Path, http, redis_url: str
) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    expert = await start_sim(name="e1")
    keys = {t: tenant_support.new_key(t) for t in ("a", "b")}
    for t, key in keys.items():
        tenant_support.write_secret_dir(tmp_path / t, {"k": key})
    cache: dict[str, Any] = {
        "exact": {"ttlSeconds": 60},
        "semantic": {"threshold": 0.8, "ttlSeconds": 60},
    }
    config = gateway_config(
        pool=pool.url,
        experts={"e1": expert_config(expert.url)},
        policy={"cache": cache},
        ledger={"url": redis_url},
        tenants={t: tenant_support.tenant(tmp_path / t) for t in keys},
    )
    config["policies"]["shared"] = {
        "localPool": "small",
        "experts": ["e1"],
        "cache": {**cache, "sharedAcrossTenants": True},
    }
    gw1 = await start_gateway(config, name="gw1")
    gw2 = await start_gateway(config, name="gw2")
    a, b = keys["a"], keys["b"]
    assert await _ask(http, gw1.url, a, "What is the capital of France?") == "expert:e1"
    # Wait until A's answer is in the Redis store: gw2 serves it to A from there.
    for _ in range(200):  # the store is written in the background
        if await _ask(http, gw2.url, a, "What is the capital of France?") == "cache":
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("A's answer never reached the shared store")
    assert await _ask(http, gw2.url, b, "What is the capital of France?") == "expert:e1"
    assert await _ask(http, gw2.url, b, "Tell me the capital of France") == "cache"  # B's own
    assert await _ask(http, gw1.url, a, "Name the capital of Italy") == "expert:e1"
    assert await _ask(http, gw1.url, b, "Tell me the capital of Italy") == "expert:e1"
    assert ("b", "semantic") in [(line["tenant"], line["cache"]) for line in gw2.audit()]
    # Opted in: one partition for everyone.
    assert await _ask(http, gw1.url, a, "Shared question here", model="shared") == "expert:e1"
    assert await _ask(http, gw1.url, b, "Shared question here", model="shared") == "cache"


async def test_tenant_rate_limit_and_confidence_offset(
    start_sim, start_gateway, tmp_path: Path, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.9)
    expert = await start_sim(name="e1")
    keys = {t: tenant_support.new_key(t) for t in ("a", "b")}
    for t, key in keys.items():
        tenant_support.write_secret_dir(tmp_path / t, {"k": key})
    config = gateway_config(
        pool=pool.url,
        experts={"e1": expert_config(expert.url)},
        tenants={
            "a": tenant_support.tenant(tmp_path / "a", rateLimits={"requestsPerMinute": 2}),
            # 0.7 + 0.25: the pool's 0.9 is no longer confident enough for b.
            "b": tenant_support.tenant(tmp_path / "b", confidenceOffset=0.25),
        },
    )
    gw = await start_gateway(config)
    assert [await _ask(http, gw.url, keys["a"], f"q{i}") for i in range(2)] == ["local"] * 2
    headers = {"authorization": f"Bearer {keys['a']}"}
    async with http.post(f"{gw.url}/v1/chat/completions", json=chat("q3"), headers=headers) as r:
        assert r.status == 429
        assert int(r.headers["retry-after"]) >= 1
        assert (await r.json())["error"]["code"] == "tenant_rate_limited"
    assert await _ask(http, gw.url, keys["b"], "q4") == "expert:e1"
    assert [line["threshold"] for line in gw.audit() if line["tenant"] == "b"] == [0.95]


async def test_tenant_tokens_per_minute_counts_what_an_expert_may_generate(
    start_sim, start_gateway, tmp_path: Path, http
) -> None:
    """tokensPerMinute counts estimated prompt plus max_tokens; a request without
    max_tokens counts the defaultMaxTokens its expert would be sent (here 1000)."""
    pool = await start_sim(name="pool", confidence=0.9)
    expert = await start_sim(name="e1")
    key = tenant_support.new_key("a")
    tenant_support.write_secret_dir(tmp_path / "a", {"k": key})
    config = gateway_config(
        pool=pool.url,
        experts={"e1": expert_config(expert.url, defaultMaxTokens=1000)},
        tenants={"a": tenant_support.tenant(tmp_path / "a", rateLimits={"tokensPerMinute": 1500})},
    )
    gw = await start_gateway(config)
    headers = {"authorization": f"Bearer {key}"}
    # "q1" is estimated at 3 + 0 + 4 = 7 prompt tokens: 1007 of the 1500.
    assert await _ask(http, gw.url, key, "q1") == "local"
    async with http.post(f"{gw.url}/v1/chat/completions", json=chat("q2"), headers=headers) as r:
        assert r.status == 429  # another 1007 would exceed 1500
        assert (await r.json())["error"]["code"] == "tenant_rate_limited"
        assert "tokens_per_minute" in (await r.json())["error"]["message"]
    # With max_tokens set, that is what counts: 7 + 400 fits in the 493 left.
    body = chat("q3", max_tokens=400)
    async with http.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
