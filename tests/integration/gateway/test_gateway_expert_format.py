"""An expert's answer is held to the request's response_format, as a local one is: a
provider may ignore response_format (an OpenAI-compatible server) or not enforce the
schema (Anthropic's forced tool). The openai SDK's ``parse()`` is the caller; the
simulated experts keep their own record of what they received and billed."""

from __future__ import annotations

import asyncio
import decimal
import logging
from typing import Any

import openai
import pydantic
import pytest
from tests.integration.gateway.conftest import chat, expert_config, gateway_config


class Weather(pydantic.BaseModel):
    city: str
    celsius: int


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def _parse(client: openai.OpenAI) -> Any:
    return client.chat.completions.with_raw_response.parse(
        model="default",
        messages=[{"role": "user", "content": "The weather in Oslo, as JSON."}],
        response_format=Weather,
        max_tokens=60,
    )


async def _status(http: Any, url: str) -> Any:
    async with http.get(f"{url}/v1/kascade/status") as resp:
        return await resp.json()


async def _metrics(http: Any, url: str) -> str:
    async with http.get(f"{url}/metrics") as resp:
        text: str = await resp.text()
        return text


PROSE = {"answer": "It is 3 degrees in Oslo."}
OFF_SCHEMA = {"off_schema": True}


@pytest.mark.parametrize(
    ("provider", "hostile", "problem"),
    [
        ("openai", PROSE, "answer is not JSON"),
        (
            "openai",
            OFF_SCHEMA,
            "answer does not follow the schema at (root): additionalProperties failed",
        ),
        (
            "anthropic",
            OFF_SCHEMA,
            "answer does not follow the schema at (root): additionalProperties failed",
        ),
    ],
    ids=["openai-prose", "openai-off-schema", "anthropic-off-schema"],
)
async def test_an_expert_answer_off_the_format_is_paid_and_the_next_expert_answers(
    start_sim,
    start_gateway,
    http,
    caplog: pytest.LogCaptureFixture,
    provider: str,
    hostile: dict[str, Any],
    problem: str,
) -> None:
    caplog.set_level(logging.INFO, logger="kascade.gateway")
    pool = await start_sim(name="pool", confidence=0.1, answer="Oslo is cold.")
    # The first expert does not honour the format: it answers in prose (a server that
    # ignores response_format) or with JSON off the schema (one that does not enforce
    # it, as Anthropic's forced tool may not); the second answers with an instance.
    prices = {"input_per_million": 1.0, "output_per_million": 2.0}
    bad = await start_sim(name="bad", **prices, **hostile)
    good = await start_sim(name="good", **prices)
    experts = {
        "bad": expert_config(bad.url, provider=provider),
        "good": expert_config(good.url, provider=provider),
    }
    gw = await start_gateway(gateway_config(pool=pool.url, experts=experts))
    raw = await asyncio.to_thread(_parse, _client(gw.url))
    assert raw.headers["x-kascade-route"] == "expert:good"
    parsed = raw.parse().choices[0].message.parsed
    assert isinstance(parsed, Weather)
    # The refused answer was asked for once (not retried), billed by its provider, and
    # charged to the expert's budget by the gateway (what the bill says).
    assert len(bad.records) == 1
    billed = int(bad.records[0]["bill_nanos"])
    assert billed > 0
    [line] = [entry for entry in gw.audit() if entry["type"] == "request"]
    assert line["attempts"] == [
        {"expert": "bad", "outcome": "invalid_format"},
        {"expert": "good", "outcome": "ok"},
    ]
    status = await _status(http, gw.url)
    assert decimal.Decimal(status["experts"]["bad"]["budget"]["spentUSD"]) * 10**9 == billed
    text = await _metrics(http, gw.url)
    assert 'kascade_expert_errors_total{error="invalid_format",expert="bad"} 1.0' in text
    assert "3 degrees" not in text + str(gw.audit())
    assert f"Expert answer refused expert=bad: {problem}" in caplog.text


async def test_no_expert_answers_in_format_the_fallback_says_why(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.1, answer="Oslo is cold.")
    prose = await start_sim(name="prose", answer="It is 3 degrees in Oslo.")
    config = gateway_config(
        pool=pool.url,
        experts={"prose": expert_config(prose.url)},
        policy={"fallback": {"whenExpertsUnavailable": "error"}},
    )
    gw = await start_gateway(config)
    body = chat(
        "The weather in Oslo, as JSON.",
        response_format={"type": "json_object"},
        max_tokens=60,
    )
    async with http.post(f"{gw.url}/v1/chat/completions", json=body) as resp:
        error = await resp.json()
    assert resp.status >= 500, error
    message = error["error"]["message"]
    assert "prose: invalid_format" in message
    assert "answer is not JSON" in message
    assert "3 degrees" not in message
