"""Privacy end to end: what the simulated expert received, and what the audit holds."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from tests.integration.gateway.conftest import chat, expert_config, gateway_config

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
PHONE = "+44 20 7946 0958"
IBAN = "DE89 3704 0044 0532 0130 00"
PROMPT = f"My email is {EMAIL}, card {CARD}, phone {PHONE}, IBAN {IBAN}. Why was I charged twice?"
PRIVACY = {"detectors": ["email", "phone", "credit-card", "iban", "ip-address"]}


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any, Any]:
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        return resp.status, resp.headers.copy(), await resp.json(content_type=None)


async def test_redact_sends_no_personal_data_to_the_expert(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(expert.url)},
            policy={"privacy": {**PRIVACY, "action": "redact"}},
        )
    )
    status, headers, _body = await _post(http, gw.url, chat(PROMPT))
    assert status == 200
    assert headers["x-kascade-route"] == "expert:e1"
    received = json.dumps(expert.records)
    for secret in (EMAIL, CARD, PHONE, IBAN, "4111"):
        assert secret not in received
    sent = expert.records[0]["body"]["messages"][0]["content"]
    assert "[REDACTED:EMAIL]" in sent
    assert "[REDACTED:CREDIT-CARD]" in sent
    assert "[REDACTED:PHONE]" in sent
    assert "[REDACTED:IBAN]" in sent
    assert "Why was I charged twice?" in sent
    # The local pool is inside the cluster: it saw the original text.
    assert EMAIL in json.dumps(pool.records)
    gw.state.audit.flush()
    audit = gw.audit_path.read_text()
    for secret in (EMAIL, CARD, PHONE, IBAN):
        assert secret not in audit
    assert json.loads(audit)["pii_found"] == {"email": 1, "credit-card": 1, "phone": 1, "iban": 1}


async def test_local_only_never_reaches_the_expert(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(expert.url)},
            policy={"privacy": {**PRIVACY, "action": "local-only"}},
        )
    )
    status, headers, _body = await _post(http, gw.url, chat(PROMPT))
    assert status == 200
    assert headers["x-kascade-route"] == "local"
    assert headers["x-kascade-reason"] == "local_only"
    assert expert.records == []
    # Without personal data the same policy escalates normally.
    status, headers, _ = await _post(http, gw.url, chat("Why was I charged twice?"))
    assert headers["x-kascade-route"] == "expert:e1"
    assert len(expert.records) == 1


async def test_allow_only_reaches_experts_that_accept_personal_data(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    strict = await start_sim(name="strict")
    lenient = await start_sim(name="lenient")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={
                "strict": expert_config(strict.url),
                "lenient": expert_config(lenient.url, allowPersonalData=True),
            },
            policy={
                "privacy": {
                    **PRIVACY,
                    "action": "allow",
                    "customPatterns": [{"name": "ticket", "regex": r"TCK-\d{6}"}],
                }
            },
        )
    )
    _status, headers, _ = await _post(http, gw.url, chat(f"{PROMPT} TCK-123456"))
    assert headers["x-kascade-route"] == "expert:lenient"
    assert strict.records == []
    assert EMAIL in json.dumps(lenient.records)
    assert gw.audit()[0]["pii_found"]["ticket"] == 1


async def test_local_only_outranks_an_expert_rule(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(expert.url)},
            policy={
                "privacy": {**PRIVACY, "action": "local-only"},
                "rules": [{"when": {"minPromptTokens": 0}, "action": "expert"}],
            },
        )
    )
    status, headers, _ = await _post(http, gw.url, chat(PROMPT))
    assert status == 200
    assert headers["x-kascade-route"] == "local"
    assert expert.records == []
    _, headers, _ = await _post(http, gw.url, chat("no personal data here"))
    assert headers["x-kascade-route"] == "expert:e1"
    assert headers["x-kascade-reason"] == "rule"
