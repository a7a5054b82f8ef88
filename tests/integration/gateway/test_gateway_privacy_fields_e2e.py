"""Privacy on every field, through a real gateway to the simulated expert: what the
expert's record holds, what is refused, what the audit keeps, and the ReDoS input."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import aiohttp
import pytest
from tests.integration.gateway.conftest import expert_config, gateway_config

EMAIL = "jane.doe@example.com"
IDN_EMAIL = "jöhn@exämple.de"
PHONE = "+44 20 7946 0958"
CARD = "4111.1111.1111.1111"
KEY = "sk-proj-4bX9aQ2LmZt7RkV1sWn8PqY3"
SECRETS = (EMAIL, IDN_EMAIL, PHONE, CARD, KEY, "4111", "7946")
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def _body(**extra: Any) -> dict[str, Any]:
    """A conversation with personal data in every field the issue found leaking."""
    arguments = json.dumps({"email": EMAIL, "phone": PHONE})
    return {
        "model": "default",
        "messages": [
            {"role": "system", "content": f"Contact {IDN_EMAIL} for refunds."},
            {"role": "user", "name": EMAIL, "content": [
                {"type": "text", "text": f"My card {CARD} was charged twice, key {KEY}"},
                {"type": "image_url", "image_url": {"url": f"https://img.example/u/{EMAIL}"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "lookup_customer", "arguments": arguments},
            }]},
            {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"phone": PHONE})},
        ],
        "stop": [f"mail {EMAIL}"],
        # Forwarded parameters that carry text: scanned like the messages.
        "tools": [{"type": "function", "function": {
            "name": "lookup_customer", "description": f"Escalations go to {EMAIL}",
            "parameters": {"type": "object", "properties": {
                "phone": {"type": "string", "default": PHONE}}},
        }}],
        "user": EMAIL,
        "metadata": {"contact": IDN_EMAIL},
        **extra,
    }  # fmt: skip


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any, Any]:
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        return resp.status, resp.headers.copy(), await resp.json(content_type=None)


async def _stack(start_sim, start_gateway, *, privacy: dict[str, Any], **policy: Any) -> Any:
    pool = await start_sim(name="pool", confidence=0.1)  # always escalates
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(expert.url)},
            policy={"privacy": privacy, **policy},
        )
    )
    return pool, expert, gw


async def test_no_field_carries_personal_data_to_the_expert(start_sim, start_gateway, http):
    pool, expert, gw = await _stack(start_sim, start_gateway, privacy={"action": "redact",
        "detectors": ["email", "phone", "credit-card", "secret"]})  # fmt: skip
    status, headers, _ = await _post(http, gw.url, _body())
    assert status == 200
    assert headers["x-kascade-route"] == "expert:e1"
    sent = expert.records[0]["body"]
    for secret in SECRETS:
        assert secret not in json.dumps(sent, ensure_ascii=False)
    messages = sent["messages"]
    assert messages[1]["name"] == "[REDACTED:EMAIL]"
    arguments = json.loads(messages[2]["tool_calls"][0]["function"]["arguments"])
    assert arguments == {"email": "[REDACTED:EMAIL]", "phone": "[REDACTED:PHONE]"}
    assert json.loads(messages[3]["content"]) == {"phone": "[REDACTED:PHONE]"}
    assert messages[1]["content"][0]["text"] == (
        "My card [REDACTED:CREDIT-CARD] was charged twice, key [REDACTED:SECRET]"
    )
    assert sent["stop"] == ["mail [REDACTED:EMAIL]"]
    function = sent["tools"][0]["function"]
    assert function["description"] == "Escalations go to [REDACTED:EMAIL]"
    assert function["parameters"]["properties"]["phone"]["default"] == "[REDACTED:PHONE]"
    assert (sent["user"], sent["metadata"]) == ("[REDACTED:EMAIL]", {"contact": "[REDACTED:EMAIL]"})
    assert headers["x-kascade-privacy"] == "redacted:credit-card,email,phone,secret"
    # The local pool is inside the cluster: it saw the original.
    assert EMAIL in json.dumps(pool.records)
    audit = gw.audit()[0]
    assert audit["pii_found"] == {"email": 8, "phone": 3, "credit-card": 1, "secret": 1}
    assert "prompt" not in audit  # includePrompts is off by default


async def test_local_only_keeps_pii_in_any_field_local(start_sim, start_gateway, http):
    _, expert, gw = await _stack(start_sim, start_gateway,
        privacy={"action": "local-only", "detectors": ["email"]})  # fmt: skip
    body = {"model": "default", "messages": [{"role": "user", "name": EMAIL, "content": "hi"}]}
    status, headers, _ = await _post(http, gw.url, body)
    assert (status, headers["x-kascade-route"]) == (200, "local")
    assert expert.records == []


async def test_image_bytes_are_refused_naming_the_part(start_sim, start_gateway, http):
    _, expert, gw = await _stack(start_sim, start_gateway, privacy={"detectors": ["email"]})
    parts = [{"type": "text", "text": "what is this?"}, IMAGE]
    body = {"model": "default", "messages": [{"role": "user", "content": parts}]}
    status, _, error = await _post(http, gw.url, body)
    assert status == 400
    assert error["error"]["param"] == "messages[0].content[1].image_url.url"
    assert error["error"]["code"] == "unscannable_content"
    assert "messages[0].content[1].image_url.url" in error["error"]["message"]
    assert expert.records == []


@pytest.mark.parametrize(
    ("unscannable", "route"), [("local-only", "local"), ("allow", "expert:e1")]
)
async def test_policy_may_keep_or_send_image_bytes(
    start_sim, start_gateway, http, unscannable: str, route: str
) -> None:
    _, expert, gw = await _stack(start_sim, start_gateway,
        privacy={"detectors": ["email"], "unscannable": unscannable})  # fmt: skip
    body = {"model": "default", "messages": [{"role": "user", "content": [IMAGE]}]}
    status, headers, _ = await _post(http, gw.url, body)
    assert (status, headers["x-kascade-route"]) == (200, route)
    assert len(expert.records) == (1 if unscannable == "allow" else 0)


async def test_include_prompts_stores_only_redacted_text(start_sim, start_gateway, http):
    _, _, gw = await _stack(start_sim, start_gateway,
        privacy={"action": "local-only", "detectors": ["email", "phone", "credit-card", "secret"]},
        audit={"includePrompts": True})  # fmt: skip
    status, _, _ = await _post(http, gw.url, _body())
    assert status == 200
    (audit,) = gw.audit()
    line = json.dumps(audit, ensure_ascii=False)
    for secret in SECRETS:
        assert secret not in line
    assert audit["messages"][0] == {
        "role": "system",
        "text": "Contact [REDACTED:EMAIL] for refunds.",
    }
    assert audit["messages"][1]["text"] == (
        "My card [REDACTED:CREDIT-CARD] was charged twice, key [REDACTED:SECRET]"
    )
    assert json.loads(audit["messages"][3]["text"]) == {"phone": "[REDACTED:PHONE]"}


async def test_a_large_body_is_scanned_off_the_event_loop(
    start_sim, start_gateway, http, monkeypatch
) -> None:
    _, expert, gw = await _stack(start_sim, start_gateway, privacy={"detectors": ["email"]})
    # The input that took seconds with the backtracking email pattern (200 KB: the
    # privacy thread's range; larger bodies go to the privacy process, below).
    text = f"{EMAIL} @ " + "a" * 200_000
    scanner = gw.state.runtime.policies["default"].scanner
    answered = threading.Event()
    real = scanner.redact_text

    def redact_after_healthz(text: str, **kwargs: Any) -> str:
        # Scanning waits until the gateway has answered /healthz: on the event loop
        # thread it would wait for itself, and the request would fail.
        if not answered.wait(timeout=60):
            raise AssertionError("/healthz was not answered while the scan ran")
        return real(text, **kwargs)

    monkeypatch.setattr(scanner, "redact_text", redact_after_healthz)
    chat = asyncio.ensure_future(_post(http, gw.url, _body_of(text)))
    async with http.get(f"{gw.url}/healthz") as resp:
        assert resp.status == 200
    answered.set()
    status, headers, _ = await chat
    assert (status, headers["x-kascade-route"]) == (200, "expert:e1")
    assert EMAIL not in json.dumps(expert.records)


def _body_of(text: str) -> dict[str, Any]:
    return {"model": "default", "messages": [{"role": "user", "content": text}]}


async def test_a_body_at_the_limit_is_scanned_in_the_privacy_process(
    start_sim, start_gateway, http, monkeypatch
) -> None:
    _, expert, gw = await _stack(start_sim, start_gateway, privacy={"detectors": ["email"]})
    scanner = gw.state.runtime.policies["default"].scanner

    def not_here(text: str, **kwargs: Any) -> str:
        raise AssertionError("a 1 MiB body was scanned in the gateway's own interpreter")

    monkeypatch.setattr(scanner, "redact_text", not_here)
    # The input that took minutes with the backtracking email pattern, at ~1 MiB.
    text = f"{EMAIL} @ " + "a" * 1_000_000
    status, headers, _ = await _post(http, gw.url, _body_of(text))
    assert (status, headers["x-kascade-route"]) == (200, "expert:e1")
    assert headers["x-kascade-privacy"] == "redacted:email"
    sent = expert.records[0]["body"]["messages"][0]["content"]
    assert sent.startswith("[REDACTED:EMAIL] @ aaa")
    assert EMAIL not in json.dumps(expert.records)
