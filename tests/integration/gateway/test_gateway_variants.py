"""An A/B split on real sockets: a scripted local pool (sim-expert acting as a pool)
answering every prompt with confidence 0.7, the simulated expert, and a policy whose two
variants keep that answer (threshold 0.3) or escalate it (threshold 0.9)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import aiohttp
from tests.integration.gateway.conftest import chat, expert_config, gateway_config

CALLERS = 400
VARIANTS = [
    {"name": "lenient", "weight": 1, "confidence": {"threshold": 0.3}},
    {"name": "strict", "weight": 3, "confidence": {"threshold": 0.9}},
]


async def _ask(http: aiohttp.ClientSession, url: str, user: str) -> dict[str, str]:
    body = chat("Name a colour. [[confidence=0.7]]", max_tokens=10, user=user)
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        await resp.read()
        assert resp.status == 200
        return dict(resp.headers)


async def _variant_gateway(start_sim: Any, start_gateway: Any, policy: dict[str, Any]) -> Any:
    """A gateway over a scripted pool (confidence 0.5, "green") and one simulated expert."""
    pool = await start_sim(name="pool", confidence=0.5, answer="green")
    expert = await start_sim(name="e1")
    return await start_gateway(
        gateway_config(pool=pool.url, experts={"e1": expert_config(expert.url)}, policy=policy)
    )


async def test_callers_keep_their_variant_and_split_by_weight(
    start_sim: Any, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    gw = await _variant_gateway(
        start_sim, start_gateway, {"confidence": {"threshold": 0.5}, "variants": VARIANTS}
    )
    seen: dict[str, set[str]] = {}
    routes: dict[str, Counter[str]] = {"lenient": Counter(), "strict": Counter()}
    for round_ in range(2):
        for i in range(CALLERS):
            headers = await _ask(http, gw.url, f"caller-{i}")
            variant = headers["x-kascade-variant"]
            seen.setdefault(f"caller-{i}", set()).add(variant)
            routes[variant][headers["x-kascade-route"]] += 1
            if round_ == 0 and i == 0:
                first_request_id = headers["x-kascade-request-id"]
    # Sticky: the same caller got the same variant on both rounds.
    assert all(len(variants) == 1 for variants in seen.values())
    lenient = sum(1 for v in seen.values() if v == {"lenient"})
    # Weight 1 of 4: 100 of 400 expected, binomial sd ~8.7; 35 is four of them.
    assert abs(lenient - CALLERS / 4) <= 35, lenient
    # Each variant applied its own threshold to the same 0.7 answers.
    assert routes["lenient"] == Counter({"local": 2 * lenient})
    assert routes["strict"] == Counter({"expert:e1": 2 * (CALLERS - lenient)})
    lines = [line for line in gw.audit() if line["type"] == "request"]
    assert len(lines) == 2 * CALLERS
    first = next(line for line in lines if line["request_id"] == first_request_id)
    assert first["variant"] == next(iter(seen["caller-0"]))
    assert {line["variant"] for line in lines} == {"lenient", "strict"}
    assert {line["threshold"] for line in lines if line["variant"] == "strict"} == {0.9}
    # The caller's identity appears nowhere in the audit lines.
    assert not any("caller-" in str(line) for line in lines)
    async with http.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    local = 'kascade_variant_requests_total{policy="default",reason="confident",route="local",'
    expert_line = (
        'kascade_variant_requests_total{policy="default",reason="low_confidence",'
        'route="expert",variant="strict"}'
    )
    assert f'{local}variant="lenient"}} {float(2 * lenient)}' in text
    assert f"{expert_line} {float(2 * (CALLERS - lenient))}" in text
    assert 'kascade_variant_cost_usd_total{policy="default",variant="strict"}' in text
    assert 'kascade_variant_cost_usd_total{policy="default",variant="lenient"}' not in text


async def test_without_a_user_field_the_api_key_keeps_the_variant(
    start_sim: Any, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    gw = await _variant_gateway(start_sim, start_gateway, {"variants": VARIANTS})
    seen: dict[int, set[str]] = {}
    for _ in range(2):
        for i in range(60):
            body = chat("Name a colour. [[confidence=0.7]]", max_tokens=10)
            headers = {"authorization": f"Bearer key-{i}"}
            async with http.post(
                f"{gw.url}/v1/chat/completions", json=body, headers=headers
            ) as resp:
                await resp.read()
                assert resp.status == 200
                seen.setdefault(i, set()).add(resp.headers["x-kascade-variant"])
    assert all(len(v) == 1 for v in seen.values())
    assert {next(iter(v)) for v in seen.values()} == {"lenient", "strict"}
    assert not any("key-" in str(line) for line in gw.audit())
