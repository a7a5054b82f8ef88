"""Provider adapters: request shapes, answers and stream translation."""

from __future__ import annotations

import json
from decimal import Decimal

import aiohttp
import pytest

from kascade.gateway import config, ledger
from kascade.gateway.experts import escalation, providers
from kascade.gateway.observe import metrics as metrics_mod


def _expert(**kw: object) -> config.ExpertConfig:
    base: dict[str, object] = {
        "provider": "openai",
        "endpoint": "https://api.example.com/",
        "model": "m",
        "pricing": {"inputPerMillionTokens": 3, "outputPerMillionTokens": 15},
        "budget": {"limitUSD": 1},
    }
    return config.ExpertConfig.model_validate({**base, **kw})


MESSAGES = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]


def test_openai_request() -> None:
    req = providers.build_request(
        expert=_expert(),
        api_key="k",
        messages=MESSAGES,
        params={"temperature": 0.2},
        max_tokens=5,
        stream=True,
    )
    assert req.url == "https://api.example.com/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer k"
    body = json.loads(req.body)
    assert body["max_tokens"] == 5
    assert body["temperature"] == 0.2
    assert body["stream_options"] == {"include_usage": True}


def test_azure_request() -> None:
    req = providers.build_request(
        expert=_expert(provider="azure-openai", apiVersion="2024-06-01", model="dep"),
        api_key="k",
        messages=MESSAGES,
        params={},
        max_tokens=5,
        stream=False,
    )
    assert (
        req.url
        == "https://api.example.com/openai/deployments/dep/chat/completions?api-version=2024-06-01"
    )
    assert req.headers["api-key"] == "k"
    assert "authorization" not in req.headers


def test_anthropic_request_and_answer() -> None:
    req = providers.build_request(
        expert=_expert(provider="anthropic"),
        api_key="k",
        messages=MESSAGES,
        params={"stop": "END"},
        max_tokens=5,
        stream=False,
    )
    assert req.url == "https://api.example.com/v1/messages"
    assert req.headers["x-api-key"] == "k"
    assert req.headers["anthropic-version"]
    body = json.loads(req.body)
    assert body["system"] == "sys"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["stop_sequences"] == ["END"]
    answer = providers.parse_answer(
        provider="anthropic",
        data={
            "id": "x",
            "model": "c",
            "content": [{"type": "text", "text": "yo"}],
            "stop_reason": "max_tokens",
            "usage": {"input_tokens": 3, "output_tokens": 4},
        },
    )
    assert answer.completion["choices"][0]["message"]["content"] == "yo"
    assert answer.completion["choices"][0]["finish_reason"] == "length"
    assert (answer.prompt_tokens, answer.completion_tokens) == (3, 4)


def test_anthropic_stream_translation() -> None:
    t = providers.StreamTranslator(provider="anthropic")
    lines = [
        b"event: message_start\n",
        b'data: {"type":"message_start","message":{"model":"c","usage":{"input_tokens":11}}}\n',
        b'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"Hel"}}\n',
        b'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"lo"}}\n',
        b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":2}}\n',
        b'data: {"type":"message_stop"}\n',
    ]
    out = [o for o in (t.feed(line) for line in lines) if o is not None]
    usage, done = out[-1].split(b"\n\n", 1)  # usage, as OpenAI streams end, then [DONE]
    assert done == b"data: [DONE]\n\n"
    assert json.loads(usage[6:])["usage"]["total_tokens"] == 13
    chunks = [json.loads(o[6:]) for o in out[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert (t.prompt_tokens, t.completion_tokens) == (11, 2)


def test_cost_is_exact_and_rounds_up() -> None:
    pricing = config.Pricing(inputPerMillionTokens=3, outputPerMillionTokens=15)
    nanos = escalation.cost_nanos(pricing=pricing, prompt_tokens=1000, completion_tokens=100)
    assert ledger.nanos_to_usd(nanos) == Decimal("0.0045")
    tiny = config.Pricing(inputPerMillionTokens=0.0001, outputPerMillionTokens=0)
    assert escalation.cost_nanos(pricing=tiny, prompt_tokens=1, completion_tokens=0) == 1


def test_retry_after_parsing() -> None:
    assert escalation.retry_after_seconds("2.5") == 2.5
    assert escalation.retry_after_seconds(None) is None
    assert escalation.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert escalation.retry_after_seconds("soon") is None


def test_credentials_from_env_and_file(tmp_path, monkeypatch) -> None:
    creds = providers.Credentials()
    monkeypatch.setenv("K1", " secret \n")
    assert creds.get(config.Credentials(env="K1")) == "secret"
    key = tmp_path / "key"
    key.write_text("from-file\n")
    assert creds.get(config.Credentials(file=str(key))) == "from-file"
    monkeypatch.delenv("K1")
    with pytest.raises(providers.CredentialError, match="K1"):
        creds.get(config.Credentials(env="K1"))


def _retrying_expert(**retries: object) -> escalation.ExpertState:
    expert_cfg = config.ExpertConfig.model_validate(
        {
            "provider": "openai",
            "endpoint": "http://127.0.0.1:9",
            "model": "m",
            "pricing": {"inputPerMillionTokens": 1.0, "outputPerMillionTokens": 2.0},
            "budget": {"limitUSD": 1.0, "window": "calendar-day"},
            "retries": retries,
        }
    )
    return escalation.ExpertState.build(name="e1", config=expert_cfg)


async def test_retry_waits_are_the_documented_ones() -> None:
    """docs/api.md, retries: the first wait is a random 50-100 % of initialBackoffMillis,
    it doubles each retry up to maxBackoffMillis, a longer Retry-After wins, and one
    longer than maxBackoffMillis moves to the next expert (None) instead of waiting."""
    expert = _retrying_expert(initialBackoffMillis=400, maxBackoffMillis=1000)
    server_error = escalation.UpstreamFailure(kind="http_500", condition="server-error")
    async with aiohttp.ClientSession() as session:
        escalator = escalation.Escalator(
            session=session,
            ledger_backend=ledger.MemoryLedger(),
            throttle=ledger.MemoryThrottle(),
            credentials=providers.Credentials(),
            metrics=metrics_mod.Metrics(),
        )

        async def delay(failure: escalation.UpstreamFailure, attempt: int) -> float | None:
            return await escalator._retry_delay(expert=expert, failure=failure, attempt=attempt)

        firsts = [await delay(server_error, 0) for _ in range(200)]
        assert all(d is not None and 0.2 <= d <= 0.4 for d in firsts)
        assert min(d for d in firsts if d is not None) < 0.25  # drawn, not a fixed wait
        seconds = [await delay(server_error, 1) for _ in range(50)]
        assert all(d is not None and 0.4 <= d <= 0.8 for d in seconds)
        capped = [await delay(server_error, 5) for _ in range(50)]
        assert all(d is not None and 0.5 <= d <= 1.0 for d in capped)

        def limited(after: float) -> escalation.UpstreamFailure:
            return escalation.UpstreamFailure(
                kind="http_429", condition="rate-limited", retry_after=after
            )

        assert await delay(limited(0.9), 0) == pytest.approx(0.9)  # longer than the backoff
        assert await delay(limited(1.5), 0) is None  # longer than maxBackoffMillis: move on
