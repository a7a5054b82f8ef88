"""The per-pool metrics the autoscaler reads, and the privacy header, on real sockets."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from tests.integration.gateway.conftest import chat, expert_config, gateway_config


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        await resp.read()
        return resp.status, resp.headers.copy()


async def _samples(
    http: aiohttp.ClientSession, url: str
) -> dict[tuple[str, tuple[Any, ...]], float]:
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_pool_metrics_count_requests_and_escalations_by_reason(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.2)
    expert = await start_sim(name="e1", prompt_tokens=20, completion_tokens=990)
    gw = await start_gateway(
        gateway_config(pool=pool.url, experts={"e1": expert_config(expert.url)})
    )
    for i in range(3):  # low confidence: escalated, $0.002 each
        status, headers = await _post(http, gw.url, chat(f"q{i}", max_tokens=1000))
        assert status == 200
        assert headers["x-kascade-reason"] == "low_confidence"
    pool.set(throttle_every=1, retry_after=1)  # now saturated: overflow
    status, headers = await _post(http, gw.url, chat("busy", max_tokens=1000))
    assert headers["x-kascade-reason"] == "overflow"
    m = await _samples(http, gw.url)
    assert m[("kascade_pool_requests_total", (("pool", "small"),))] == 4
    esc = "kascade_pool_escalations_total"
    assert m[(esc, (("pool", "small"), ("reason", "low_confidence")))] == 3
    assert m[(esc, (("pool", "small"), ("reason", "overflow")))] == 1
    cost = "kascade_pool_escalation_cost_usd_total"
    assert abs(m[(cost, (("pool", "small"), ("reason", "low_confidence")))] - 0.006) < 1e-9
    assert abs(m[(cost, (("pool", "small"), ("reason", "overflow")))] - 0.002) < 1e-9
    assert m[("kascade_pool_inflight_requests", (("pool", "small"),))] == 0


async def test_privacy_header_and_metric_say_what_was_done(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.2)
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(expert.url)},
            policy={"privacy": {"detectors": ["email", "phone"], "action": "redact"}},
        )
    )
    status, headers = await _post(http, gw.url, chat("mail jane.doe@example.com please"))
    assert status == 200
    assert headers["x-kascade-privacy"] == "redacted:email"
    assert "jane.doe@example.com" not in str(expert.records)
    status, headers = await _post(http, gw.url, chat("no personal data here"))
    assert "x-kascade-privacy" not in headers
    m = await _samples(http, gw.url)
    key = (("action", "redacted"), ("kind", "email"), ("policy", "default"))
    assert m[("kascade_privacy_detections_total", key)] == 1
