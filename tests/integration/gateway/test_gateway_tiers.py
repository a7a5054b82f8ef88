"""Local tiers end to end: a prompt goes to the first tier whose maxPromptTokens takes
it; one longer than every tier takes skips the local pass and escalates with reason
`prompt_too_long`, or is refused with a clear 503 when no expert may take it."""

from __future__ import annotations

from typing import Any

import aiohttp
from tests.integration.gateway.conftest import chat, expert_config, gateway_config

SHORT = "hello there"  # a few tokens: the small tier's
MEDIUM = "word " * 100  # over 50 estimated tokens, under 400: the mid tier's
LONG = "word " * 1000  # over 400: no tier's

TIERS = {
    "localPool": None,
    "tiers": [{"pool": "small", "maxPromptTokens": 50}, {"pool": "mid", "maxPromptTokens": 400}],
}


async def _post(
    http: aiohttp.ClientSession, url: str, body: Any, **kw: Any
) -> tuple[int, Any, Any]:
    async with http.post(f"{url}/v1/chat/completions", json=body, **kw) as resp:
        return resp.status, resp.headers.copy(), await resp.json(content_type=None)


def _prompt(record: dict[str, Any]) -> str:
    """The user message a simulated pool or expert received."""
    content: str = record["body"]["messages"][-1]["content"]
    return content


async def _metrics(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics") as resp:
        return await resp.text()


async def _two_tiers(start_sim, start_gateway, *, experts: dict[str, Any], **policy: Any) -> Any:
    # Fixed answers: an echo of a long prompt would be flagged as degenerate.
    small = await start_sim(name="small", confidence=0.99, answer="small tier answer")
    mid = await start_sim(name="mid", confidence=0.99, answer="mid tier answer")
    config = gateway_config(
        pool=small.url,
        experts=experts,
        policy={**TIERS, **policy},
        pools={"mid": {"endpoint": mid.url, "model": "mid", "timeoutSeconds": 5}},
    )
    return small, mid, await start_gateway(config)


async def test_prompt_goes_to_the_first_tier_that_takes_it(start_sim, start_gateway, http) -> None:
    expert = await start_sim(name="e1")
    small, mid, gw = await _two_tiers(
        start_sim,
        start_gateway,
        experts={"e1": expert_config(expert.url)},
        rules=[{"when": {"taskLabels": ["tiny"]}, "action": "tier", "target": "small"}],
    )
    _, headers, body = await _post(http, gw.url, chat(SHORT))
    assert (headers["x-kascade-route"], headers["x-kascade-reason"]) == ("local", "confident")
    assert body["choices"][0]["message"]["content"] == "small tier answer"
    _, headers, body = await _post(http, gw.url, chat(MEDIUM))
    assert (headers["x-kascade-route"], headers["x-kascade-reason"]) == ("local", "confident")
    assert body["choices"][0]["message"]["content"] == "mid tier answer"
    assert [_prompt(r) for r in small.records] == [SHORT]
    assert [_prompt(r) for r in mid.records] == [MEDIUM]
    status, headers, body = await _post(http, gw.url, chat(LONG))
    assert status == 200, body
    assert headers["x-kascade-route"] == "expert:e1"
    assert headers["x-kascade-reason"] == "prompt_too_long"
    assert [_prompt(r) for r in expert.records] == [LONG]
    assert (len(small.records), len(mid.records)) == (1, 1)
    # A rule with action tier still names its tier, whatever that tier's limit.
    _, headers, body = await _post(http, gw.url, chat(LONG), headers={"x-kascade-task": "tiny"})
    assert headers["x-kascade-route"] == "local"
    assert [_prompt(r) for r in small.records] == [SHORT, LONG]
    audit = gw.audit()
    assert [line["reason"] for line in audit] == [
        "confident", "confident", "prompt_too_long", "confident",
    ]  # fmt: skip
    assert audit[2]["prompt_tokens_estimate"] > 400
    text = await _metrics(http, gw.url)
    # Counted against the last tier, where the autoscaler reads it and adds nothing.
    assert 'kascade_pool_escalations_total{pool="mid",reason="prompt_too_long"} 1.0' in text
    assert 'kascade_pool_requests_total{pool="mid"} 1.0' in text
    assert (
        'kascade_escalations_total{expert="e1",policy="default",reason="prompt_too_long"} 1.0'
        in text
    )


async def test_too_long_for_every_tier_without_an_expert_is_a_clear_503(
    start_sim, start_gateway, http
) -> None:
    small, mid, gw = await _two_tiers(start_sim, start_gateway, experts={})
    status, headers, body = await _post(http, gw.url, chat(LONG))
    assert status == 503, body
    assert headers["x-kascade-reason"] == "prompt_too_long"
    assert body["error"]["code"] == "no_answer"
    [line] = gw.audit()
    estimate = line["prompt_tokens_estimate"]
    message = body["error"]["message"]
    assert f"about {estimate} tokens" in message
    assert "largest maxPromptTokens is 400" in message
    assert (small.records, mid.records) == ([], [])
    # Shorter prompts are still answered by their tier.
    status, headers, body = await _post(http, gw.url, chat(MEDIUM))
    assert (status, headers["x-kascade-route"]) == (200, "local")
    assert body["choices"][0]["message"]["content"] == "mid tier answer"


async def test_failed_escalation_of_a_too_long_prompt_has_no_local_fallback(
    start_sim, start_gateway, http
) -> None:
    expert = await start_sim(name="e1", fail_every=1, fail_status=500)
    small, mid, gw = await _two_tiers(
        start_sim, start_gateway, experts={"e1": expert_config(expert.url)}
    )
    status, headers, body = await _post(http, gw.url, chat(LONG))
    assert status == 503, body
    assert headers["x-kascade-reason"] == "prompt_too_long"
    assert body["error"]["code"] == "no_answer"
    assert "largest maxPromptTokens is 400" in body["error"]["message"]
    assert len(expert.records) == 1
    assert (small.records, mid.records) == ([], [])
