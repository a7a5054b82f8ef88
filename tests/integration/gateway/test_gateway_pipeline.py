"""The pipeline end to end on real sockets: local pass, confidence, escalation,
providers, streaming, rules, overflow, cache, endpoints."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis_asyncio
from tests.integration.gateway.conftest import chat, expert_config, gateway_config


async def _post(
    http: aiohttp.ClientSession, url: str, body: Any, **kw: Any
) -> tuple[int, Any, Any]:
    async with http.post(f"{url}/v1/chat/completions", json=body, **kw) as resp:
        data = await resp.json(content_type=None)
        return resp.status, resp.headers.copy(), data


async def test_confident_local_answer_stays_local(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.95)
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(pool=pool.url, experts={"e1": expert_config(expert.url)})
    )
    status, headers, body = await _post(http, gw.url, chat("hello there"))
    assert status == 200
    assert headers["x-kascade-route"] == "local"
    assert headers["x-kascade-reason"] == "confident"
    assert float(headers["x-kascade-confidence"]) == 0.95
    assert headers["x-kascade-cost-usd"] == "0"
    assert len(headers["x-kascade-request-id"]) == 32
    assert body["choices"][0]["message"]["content"] == "[pool] hello there"
    assert expert.records == []
    [line] = gw.audit()
    assert line["policy"] == "default"
    assert line["generation"] == 3
    assert line["threshold"] == 0.7
    assert line["route"] == "local"


async def test_low_confidence_escalates_and_settles_actual_cost(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.2)
    # Usage within what the request can cost (the worst case bounds every settlement).
    expert = await start_sim(name="e1", prompt_tokens=20, completion_tokens=990)
    gw = await start_gateway(
        gateway_config(pool=pool.url, experts={"e1": expert_config(expert.url)})
    )
    status, headers, body = await _post(http, gw.url, chat("what is the meaning", max_tokens=1000))
    assert status == 200, body
    assert headers["x-kascade-route"] == "expert:e1"
    assert headers["x-kascade-reason"] == "low_confidence"
    # 20 prompt tokens at $1/M + 990 completion tokens at $2/M = $0.002
    assert headers["x-kascade-cost-usd"] == "0.002"
    assert body["choices"][0]["message"]["content"] == "[e1] what is the meaning"
    [received] = expert.records
    assert received["body"]["max_tokens"] == 1000
    assert received["auth"] is False
    async with http.get(f"{gw.url}/v1/kascade/status") as resp:
        status_doc = await resp.json()
    assert status_doc["experts"]["e1"]["budget"]["spentUSD"] == "0.002"
    assert status_doc["experts"]["e1"]["budget"]["reservedUSD"] == "0"
    # The figures the operator copies into RoutingPolicy.status.stats.
    stats = status_doc["policies"]["default"]["stats"]
    assert {k: stats[k] for k in ("requests", "escalated", "cacheHits", "costNanos")} == {
        "requests": 1,
        "escalated": 1,
        "cacheHits": 0,
        "costNanos": 2_000_000,
    }
    async with http.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    assert (
        'kascade_escalations_total{expert="e1",policy="default",reason="low_confidence"} 1.0'
        in text
    )
    assert 'kascade_expert_cost_usd_total{expert="e1"} 0.002' in text
    # Budget 100 USD per day (expert_config), 0.002 spent.
    assert 'kascade_budget_remaining_usd{expert="e1"} 99.998' in text
    assert (
        'kascade_requests_total{policy="default",reason="low_confidence",route="expert"} 1.0'
        in text
    )
    assert 'kascade_request_duration_seconds_count{route="expert"} 1.0' in text
    assert 'kascade_confidence_count{policy="default"} 1.0' in text


async def test_anthropic_and_azure_providers(start_sim, start_gateway, http, monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_KEY", "sk-ant-secret")
    monkeypatch.setenv("AZURE_KEY", "az-secret")
    pool = await start_sim(name="pool", confidence=0.1)
    anth = await start_sim(name="claude", prompt_tokens=10, completion_tokens=20)
    azure = await start_sim(name="azure", prompt_tokens=10, completion_tokens=20)
    experts = {
        "claude": expert_config(
            anth.url, provider="anthropic", credentials={"env": "ANTHROPIC_KEY"}
        ),
        "azure": expert_config(
            azure.url,
            provider="azure-openai",
            model="gpt4o-deploy",
            apiVersion="2024-06-01",
            credentials={"env": "AZURE_KEY"},
        ),
    }
    gw = await start_gateway(gateway_config(pool=pool.url, experts=experts))
    body = {
        "model": "default",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi claude"},
        ],
    }
    status, headers, data = await _post(http, gw.url, body)
    assert status == 200
    assert headers["x-kascade-route"] == "expert:claude"
    assert data["choices"][0]["message"]["content"] == "[claude] hi claude"
    assert data["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    [rec] = anth.records
    assert rec["path"] == "/v1/messages"
    assert rec["auth"] is True
    assert rec["body"]["system"] == "be brief"
    assert rec["body"]["messages"] == [{"role": "user", "content": "hi claude"}]
    # Break claude: the next expert is azure, on its deployment path.
    anth.set(fail_every=1)
    status, headers, data = await _post(http, gw.url, body)
    assert status == 200
    assert headers["x-kascade-route"] == "expert:azure"
    [rec] = azure.records
    assert rec["path"] == "/openai/deployments/gpt4o-deploy/chat/completions?api-version=2024-06-01"
    async with http.get(f"{gw.url}/v1/kascade/status") as resp:
        text = await resp.text()
    assert "secret" not in text


async def _sse(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[Any, list[Any]]:
    events: list[Any] = []
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.content:
            line = line.strip()
            if line.startswith(b"data:"):
                payload = line[5:].strip()
                events.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
        return resp.headers.copy(), events


def _text(events: list[Any]) -> str:
    return "".join(
        c["delta"].get("content", "") for e in events if e != "[DONE]" for c in e["choices"]
    )


async def test_streaming_local_and_expert(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.9)
    oai = await start_sim(name="oai", prompt_tokens=7, completion_tokens=3)
    anth = await start_sim(name="claude", prompt_tokens=7, completion_tokens=3)
    experts = {
        "oai": expert_config(oai.url),
        "claude": expert_config(anth.url, provider="anthropic"),
    }
    gw = await start_gateway(gateway_config(pool=pool.url, experts=experts))
    # Confident: buffered local answer re-sent as SSE.
    headers, events = await _sse(http, gw.url, chat("stream me", stream=True))
    assert headers["x-kascade-route"] == "local"
    assert events[-1] == "[DONE]"
    assert _text(events) == "[pool] stream me"
    # Low confidence: the expert's SSE is proxied and its usage settles the cost.
    pool.set(confidence=0.1)
    headers, events = await _sse(http, gw.url, chat("stream expert words", stream=True))
    assert headers["x-kascade-route"] == "expert:oai"
    assert events[-1] == "[DONE]"
    assert _text(events) == "[oai] stream expert words"
    assert oai.records[0]["body"]["stream"] is True
    # Anthropic events translated into OpenAI chunks.
    oai.set(fail_every=1)
    headers, events = await _sse(http, gw.url, chat("stream claude", stream=True))
    assert headers["x-kascade-route"] == "expert:claude"
    assert _text(events) == "[claude] stream claude"
    assert events[-1] == "[DONE]"
    audit = gw.audit()
    assert [a["cost_usd"] for a in audit] == ["0", "0.000013", "0.000013"]


async def test_streaming_pass_through_when_no_expert(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    gw = await start_gateway(gateway_config(pool=pool.url, experts={}))
    headers, events = await _sse(http, gw.url, chat("one two three", stream=True))
    assert headers["x-kascade-route"] == "local"
    assert _text(events) == "[pool] one two three"
    assert pool.records[0]["body"]["stream"] is True


async def test_rules_route_before_the_local_pass(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    big = await start_sim(name="big", confidence=0.99)
    expert = await start_sim(name="e1")
    config = gateway_config(
        pool=pool.url,
        experts={"e1": expert_config(expert.url)},
        policy={
            "rules": [
                {
                    "name": "long-prompts",
                    "when": {"minPromptTokens": 51},
                    "action": "expert",
                    "target": "e1",
                },
                {
                    "name": "code",
                    "when": {"taskLabels": ["code"]},
                    "action": "tier",
                    "target": "big",
                },
                {
                    "when": {"header": {"name": "x-keep-local", "values": ["yes"]}},
                    "action": "local",
                },
            ]
        },
        pools={"big": {"endpoint": big.url, "model": "big"}},
    )
    gw = await start_gateway(config)
    _, headers, _ = await _post(http, gw.url, chat("long " * 100))
    assert headers["x-kascade-route"] == "expert:e1"
    assert headers["x-kascade-reason"] == "rule"
    assert headers["x-kascade-rule"] == "long-prompts"
    assert pool.records == []
    _, headers, body = await _post(
        http, gw.url, chat("write code"), headers={"x-kascade-task": "code"}
    )
    assert headers["x-kascade-route"] == "local"
    assert body["choices"][0]["message"]["content"] == "[big] write code"
    assert headers["x-kascade-rule"] == "code"  # a tier rule: the reason is the local pass's
    _status, headers, _ = await _post(http, gw.url, chat("short"), headers={"x-keep-local": "yes"})
    assert headers["x-kascade-route"] == "local"
    assert headers["x-kascade-reason"] == "no_experts"
    assert "x-kascade-rule" not in headers  # the rule has no name
    assert len(expert.records) == 1
    assert [a["rule"] for a in gw.audit()] == [0, 1, 2]


async def test_overflow_escalate_reject_wait(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.9, throttle_every=1, retry_after=1)
    expert = await start_sim(name="e1")
    experts = {"e1": expert_config(expert.url)}
    gw = await start_gateway(gateway_config(pool=pool.url, experts=experts))
    status, headers, _ = await _post(http, gw.url, chat("busy"))
    assert headers["x-kascade-route"] == "expert:e1"
    assert headers["x-kascade-reason"] == "overflow"
    gw2 = await start_gateway(
        gateway_config(pool=pool.url, experts=experts, policy={"overflow": "reject"}), name="gw2"
    )
    status, headers, body = await _post(http, gw2.url, chat("busy"))
    assert status == 429
    assert body["error"]["code"] == "pool_saturated"
    assert headers["retry-after"] == "1"
    gw3 = await start_gateway(
        gateway_config(
            pool=pool.url, experts=experts, policy={"overflow": "wait", "overflowWaitMillis": 300}
        ),
        name="gw3",
    )
    pool.set(throttle_every=2, retry_after=0.1)  # every other call is saturated
    status, headers, body = await _post(http, gw3.url, chat("wait for it"))
    assert status == 200
    assert headers["x-kascade-route"] == "local"


async def test_exact_cache_serves_repeats(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(expert.url)},
            policy={"cache": {"exact": {"ttlSeconds": 60}}},
        )
    )
    _, h1, b1 = await _post(http, gw.url, chat("cache  me"))
    _, h2, b2 = await _post(http, gw.url, chat("cache me"))
    assert h1["x-kascade-route"] == "expert:e1"
    assert h2["x-kascade-route"] == "cache"
    assert h2["x-kascade-reason"] == "cache_exact"
    assert h2["x-kascade-cost-usd"] == "0"
    assert b1 == b2
    _, h3, _ = await _post(http, gw.url, chat("cache me", temperature=0.5))
    assert h3["x-kascade-route"] == "expert:e1"
    assert len(expert.records) == 2


async def test_bad_inputs_get_openai_errors_and_cost_nothing(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url, experts={"e1": expert_config(expert.url)}, limits={"maxBodyBytes": 2048}
        )
    )
    cases = [
        (b"{not json", 400, None, "invalid_json"),
        (b"[1, 2]", 400, None, "invalid_type"),
        (
            json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode(),
            404,
            "model",
            "model_not_found",
        ),
        (
            json.dumps({"model": "default", "messages": "hi"}).encode(),
            400,
            "messages",
            "invalid_value",
        ),
        (
            json.dumps(
                {"model": "default", "messages": [{"role": "bot", "content": "x"}]}
            ).encode(),
            400,
            "messages[0].role",
            "invalid_value",
        ),
        (
            json.dumps({"model": "default", "messages": [{"role": "user", "content": 5}]}).encode(),
            400,
            "messages[0].content",
            "invalid_value",
        ),
        (json.dumps(chat("x", max_tokens="many")).encode(), 400, "max_tokens", "invalid_value"),
        (json.dumps(chat("x", temperature=9)).encode(), 400, "temperature", "invalid_value"),
        (json.dumps(chat("x", stream="yes")).encode(), 400, "stream", "invalid_value"),
        (json.dumps(chat("x" * 5000)).encode(), 413, None, "request_too_large"),
    ]
    for raw, status, param, code in cases:
        async with http.post(
            f"{gw.url}/v1/chat/completions", data=raw, headers={"content-type": "application/json"}
        ) as resp:
            body = await resp.json()
            assert resp.status == status, (raw[:40], body)
            assert set(body["error"]) == {"message", "type", "param", "code"}
            assert body["error"]["param"] == param
            assert body["error"]["code"] == code
            assert body["error"]["message"]
    assert pool.records == []
    assert expert.records == []
    async with http.get(f"{gw.url}/v1/kascade/status") as resp:
        doc = await resp.json()
    assert doc["experts"]["e1"]["budget"]["spentUSD"] == "0"
    assert doc["experts"]["e1"]["budget"]["reservedUSD"] == "0"


async def test_api_keys_models_feedback_health(start_sim, start_gateway, http, tmp_path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# comment\nkey-one\nkey-two\n")
    pool = await start_sim(name="pool", confidence=0.9)
    gw = await start_gateway(
        gateway_config(pool=pool.url, experts={}, auth={"apiKeysFile": str(keys)})
    )
    status, _, body = await _post(http, gw.url, chat("hi"))
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    status, _, body = await _post(
        http, gw.url, chat("hi"), headers={"authorization": "Bearer wrong"}
    )
    assert status == 401
    auth = {"authorization": "Bearer key-two"}
    status, headers, _ = await _post(http, gw.url, chat("hi"), headers=auth)
    assert status == 200
    async with http.get(f"{gw.url}/v1/models", headers=auth) as resp:
        assert (await resp.json())["data"][0]["id"] == "default"
    for path in ("/healthz", "/readyz"):
        async with http.get(gw.url + path) as resp:
            assert resp.status == 200
    rid = headers["x-kascade-request-id"]
    async with http.post(
        f"{gw.url}/v1/kascade/feedback",
        json={"request_id": rid, "rating": "down", "policy": "default"},
        headers=auth,
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["label"] == "negative"
    async with http.post(
        f"{gw.url}/v1/kascade/feedback", json={"request_id": rid, "rating": 9}, headers=auth
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "rating"
    async with http.get(f"{gw.url}/metrics") as resp:
        assert 'kascade_feedback_total{policy="default",rating="negative"} 1.0' in await resp.text()
    assert gw.audit()[-1]["type"] == "feedback"


async def test_cheapest_selection_cost_cap_and_context_limit(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    pricey = await start_sim(name="pricey")
    cheap = await start_sim(name="cheap")
    experts = {
        "pricey": expert_config(
            pricey.url, pricing={"inputPerMillionTokens": 30, "outputPerMillionTokens": 60}
        ),
        "cheap": expert_config(
            cheap.url,
            pricing={"inputPerMillionTokens": 0.1, "outputPerMillionTokens": 0.2},
            # "short question" is estimated at 10 prompt tokens: with max_tokens=100 it
            # just fits (maxContextTokens counts the prompt plus max_tokens).
            maxContextTokens=110,
        ),
    }
    gw = await start_gateway(
        gateway_config(pool=pool.url, experts=experts, policy={"selection": "cheapest"})
    )
    _, headers, _ = await _post(http, gw.url, chat("short question", max_tokens=100))
    assert headers["x-kascade-route"] == "expert:cheap"
    # The same prompt with room for one more answer token no longer fits cheap's context.
    _, headers, _ = await _post(http, gw.url, chat("short question", max_tokens=101))
    assert headers["x-kascade-route"] == "expert:pricey"
    assert gw.audit()[-1]["attempts"][0] == {"expert": "cheap", "outcome": "context_too_long"}
    # Without max_tokens the expert is sent defaultMaxTokens, which does not fit either.
    _, headers, _ = await _post(http, gw.url, chat("short question"))
    assert headers["x-kascade-route"] == "expert:pricey"
    # Too long for cheap's context: pricey answers.
    _, headers, _ = await _post(http, gw.url, chat("word " * 100, max_tokens=100))
    assert headers["x-kascade-route"] == "expert:pricey"
    assert gw.audit()[-1]["attempts"][0] == {"expert": "cheap", "outcome": "context_too_long"}
    # A cap below pricey's worst case: (16 + 8 + 500 bytes) x $30/M + 1000 x $60/M = $0.076.
    capped = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts=experts,
            policy={"selection": "cheapest", "maxCostPerRequestUSD": 0.01},
        ),
        name="capped",
    )
    _, headers, _ = await _post(http, capped.url, chat("word " * 100, max_tokens=1000))
    assert headers["x-kascade-route"] == "local"
    assert "pricey: over_request_cost_cap" in headers["x-kascade-degraded"]
    assert len(pricey.records) == 3


async def test_semantic_cache_end_to_end(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(expert.url)},
            policy={"cache": {"semantic": {"threshold": 0.8, "ttlSeconds": 60}}},
        )
    )
    _, first, body = await _post(http, gw.url, chat("What is the capital of France?"))
    _, second, again = await _post(http, gw.url, chat("Tell me the capital of France"))
    assert first["x-kascade-route"] == "expert:e1"
    assert second["x-kascade-route"] == "cache"
    assert second["x-kascade-reason"] == "cache_semantic"
    assert again == body
    _, h1, _ = await _post(http, gw.url, chat("Is 7 a prime number?"))
    _, h2, _ = await _post(http, gw.url, chat("Is 9 a prime number?"))
    assert h1["x-kascade-route"] == h2["x-kascade-route"] == "expert:e1"
    assert len(expert.records) == 3
    async with http.get(f"{gw.url}/metrics") as resp:
        assert 'kascade_cache_hits_total{kind="semantic"} 1.0' in await resp.text()
    assert [a["cache"] for a in gw.audit()] == ["miss", "semantic", "miss", "miss"]


@pytest.mark.redis
async def test_exact_cache_is_shared_by_replicas_on_redis(
    start_sim, start_gateway, http, redis_url: str
) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    expert = await start_sim(name="e1")
    config = gateway_config(
        pool=pool.url,
        experts={"e1": expert_config(expert.url)},
        policy={"cache": {"exact": {"ttlSeconds": 60}}},
        ledger={"url": redis_url},
    )
    a = await start_gateway(config, name="a")
    b = await start_gateway(config, name="b")
    _, first, body = await _post(http, a.url, chat("shared question"))
    assert first["x-kascade-route"] == "expert:e1"
    # The store is written in the background: wait until the entry is in Redis.
    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 10
        while not await client.keys("kascade:cache:*"):
            assert time.monotonic() < deadline, "the shared cache entry was never stored"
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()
    _, second, again = await _post(http, b.url, chat("shared  question"))
    assert second["x-kascade-route"] == "cache"
    assert second["x-kascade-reason"] == "cache_exact"
    assert again == body
    assert len(expert.records) == 1
    assert len(pool.records) == 1
    _, third, _ = await _post(http, b.url, chat("another question"))
    assert third["x-kascade-route"] == "expert:e1"
