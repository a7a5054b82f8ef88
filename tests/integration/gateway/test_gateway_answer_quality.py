"""Answer quality at the gateway on real sockets: the degeneration detector and the
combined score, with a scripted local pool and a simulated expert."""

from __future__ import annotations

import math
from typing import Any

import aiohttp
from tests.integration.gateway.conftest import chat, expert_config, gateway_config

LOOP = "In the tapestry of life, " + "a tapestry of life, " * 12
SIGNALS = {
    "mean_token_prob": 0.9,
    "min_token_prob": 0.4,
    "margin": 0.8,
    "sequence_prob": 0.2,
    "mean_logprob": -0.15,
    "token_prob_q05": 0.45,
    "token_prob_q10": 0.5,
    "token_prob_q25": 0.8,
    "token_prob_q50": 0.95,
    "tokens": 10.0,
}
COMBINED = {"intercept": 1.0, "weights": {"log_token_prob_q10": 2.0, "task:arithmetic": -3.0}}


async def _post(
    http: aiohttp.ClientSession, url: str, body: Any, **kw: Any
) -> tuple[int, Any, Any]:
    async with http.post(f"{url}/v1/chat/completions", json=body, **kw) as resp:
        data = await resp.json(content_type=None)
        return resp.status, resp.headers.copy(), data


async def test_a_confident_loop_escalates_as_degenerate(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.95, answer=LOOP)
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(pool=pool.url, experts={"e1": expert_config(expert.url)})
    )
    status, headers, body = await _post(http, gw.url, chat("Write a haiku about Kubernetes."))
    assert status == 200, body
    assert headers["x-kascade-route"] == "expert:e1"
    assert headers["x-kascade-reason"] == "degenerate"
    assert headers["x-kascade-degeneration"] == "repetition"
    assert body["choices"][0]["message"]["content"] == "[e1] Write a haiku about Kubernetes."
    [line] = gw.audit()
    assert line["reason"] == "degenerate"
    assert line["degeneration"] == "repetition"
    async with http.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    assert 'kascade_escalations_total{expert="e1",policy="default",reason="degenerate"} 1.0' in text


async def test_the_detector_can_be_turned_off_per_policy(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.95, answer=LOOP)
    expert = await start_sim(name="e1")
    config = gateway_config(
        pool=pool.url,
        experts={"e1": expert_config(expert.url)},
        policy={"confidence": {"degeneration": {"enabled": False}}},
    )
    gw = await start_gateway(config)
    _, headers, _ = await _post(http, gw.url, chat("Write a haiku about Kubernetes."))
    assert headers["x-kascade-route"] == "local"
    assert headers["x-kascade-reason"] == "confident"
    assert "x-kascade-degeneration" not in headers
    assert expert.records == []


async def test_an_empty_answer_escalates_as_degenerate(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.99, answer="   ")
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(pool=pool.url, experts={"e1": expert_config(expert.url)})
    )
    _, headers, _ = await _post(http, gw.url, chat("What is 2 plus 2?"))
    assert headers["x-kascade-reason"] == "degenerate"
    assert headers["x-kascade-degeneration"] == "empty"


async def test_the_combined_score_uses_the_configured_weights_and_task(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.3, answer="4", confidence_signals=SIGNALS)
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(expert.url)},
            policy={"confidence": {"method": "combined", "threshold": 0.5, "combined": COMBINED}},
        )
    )
    # 1 + 2 ln(0.5) = -0.386: the pool's own figure (0.3) is not what decides.
    expected = 1 / (1 + math.exp(-(1.0 + 2.0 * math.log(0.5))))
    _, headers, _ = await _post(http, gw.url, chat("What is 2 plus 2?"))
    assert float(headers["x-kascade-confidence"]) == round(expected, 4)
    assert headers["x-kascade-reason"] == "low_confidence"
    pool.set(confidence_signals={**SIGNALS, "token_prob_q10": 0.99})
    _, headers, _ = await _post(http, gw.url, chat("What is 2 plus 2?"))
    assert headers["x-kascade-route"] == "local"
    assert headers["x-kascade-reason"] == "confident"
    # The same answer on a task the weights distrust escalates.
    _, headers, _ = await _post(
        http, gw.url, chat("What is 2 plus 2?"), headers={"x-kascade-task": "arithmetic"}
    )
    assert headers["x-kascade-reason"] == "low_confidence"
    assert [line["method"] for line in gw.audit()] == ["combined"] * 3


async def test_combined_without_signals_keeps_the_answer_unscored(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.9, answer="4")
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(expert.url)},
            policy={"confidence": {"method": "combined", "combined": COMBINED}},
        )
    )
    _, headers, _ = await _post(http, gw.url, chat("What is 2 plus 2?"))
    assert headers["x-kascade-route"] == "local"
    assert headers["x-kascade-reason"] == "confidence_unavailable"
