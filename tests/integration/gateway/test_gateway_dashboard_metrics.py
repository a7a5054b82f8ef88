"""The metrics the chart's dashboard and alerts read (docs/observability.md), from a real
gateway on real sockets, and ``kascade status`` reading the same gateway."""

from __future__ import annotations

import asyncio
import calendar
import sys
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.integration.gateway.conftest import chat, expert_config, gateway_config

from kascade.gateway.observe import scrape

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# The sim reports 10 prompt and 4 completion tokens; the expert charges $1/M and $2/M.
ANSWER_USD = (10 * 1.0 + 4 * 2.0) / 1_000_000


async def _post(
    http: aiohttp.ClientSession, url: str, body: Any, *, task: str | None = None
) -> tuple[int, Any]:
    headers = {"x-kascade-task": task} if task else {}
    async with http.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
        await resp.read()
        return resp.status, resp.headers.copy()


async def _samples(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _config(pool: str, expert: str, **expert_extra: Any) -> dict[str, Any]:
    return gateway_config(
        pool=pool,
        experts={"e1": expert_config(expert, **expert_extra)},
        policy={
            "confidence": {"method": "mean-token-prob", "threshold": 0.5},
            "rules": [
                {"name": "sql", "when": {"taskLabels": ["sql"]}, "action": "local"},
            ],
        },
    )


async def test_cost_baseline_task_threshold_and_status_classes(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.9, prompt_tokens=10, completion_tokens=4)
    expert = await start_sim(name="e1", prompt_tokens=10, completion_tokens=4)
    gw = await start_gateway(_config(pool.url, expert.url))
    assert (await _post(http, gw.url, chat("local", max_tokens=8), task="sql"))[0] == 200
    _, headers = await _post(http, gw.url, chat("[[confidence=0.1]] hard", max_tokens=8))
    assert headers["x-kascade-route"] == "expert:e1"
    await _post(http, gw.url, chat("odd label", max_tokens=8), task="free-text-label")
    assert (await _post(http, gw.url, {"model": "nope", "messages": []}))[0] in (400, 404)
    m = await _samples(http, gw.url)
    key = (("policy", "default"), ("task", "sql"))
    assert m[("kascade_task_requests_total", key)] == 1
    assert m[("kascade_request_cost_usd_total", key)] == 0  # answered locally
    # The local answer priced at the first expert's rates, from the usage it reported.
    assert m[("kascade_baseline_cost_usd_total", key)] == pytest.approx(ANSWER_USD)
    key = (("policy", "default"), ("task", "none"))
    assert m[("kascade_request_cost_usd_total", key)] == pytest.approx(ANSWER_USD)
    assert m[("kascade_baseline_cost_usd_total", key)] == pytest.approx(ANSWER_USD)
    # A label no rule names is not a series of its own (clients cannot add series).
    assert m[("kascade_task_requests_total", (("policy", "default"), ("task", "other")))] == 1
    assert not [k for k in m if ("task", "free-text-label") in k[1]]
    assert m[("kascade_confidence_threshold", (("policy", "default"),))] == 0.5
    assert m[("kascade_http_responses_total", (("code", "2xx"), ("policy", "default")))] == 3
    assert m[("kascade_http_responses_total", (("code", "4xx"), ("policy", "")))] == 1


async def test_budget_window_circuit_and_ledger_gauges(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    expert = await start_sim(name="e1", prompt_tokens=10, completion_tokens=4)
    gw = await start_gateway(
        _config(pool.url, expert.url, circuitBreaker={"failureThreshold": 2, "openSeconds": 60})
    )
    await _post(http, gw.url, chat("escalated", max_tokens=8))
    before = time.time()
    m = await _samples(http, gw.url)
    e1 = (("expert", "e1"),)
    assert m[("kascade_budget_limit_usd", e1)] == 100
    assert m[("kascade_budget_spent_usd", e1)] == pytest.approx(ANSWER_USD)
    assert m[("kascade_budget_reserved_usd", e1)] == 0
    assert m[("kascade_budget_remaining_usd", e1)] == pytest.approx(100 - ANSWER_USD)
    t = time.gmtime(before)
    midnight = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86_400
    assert m[("kascade_budget_window_end_timestamp_seconds", e1)] == midnight
    assert m[("kascade_circuit_breaker_state", e1)] == 0
    assert m[("kascade_ledger_up", ())] == 1
    expert.set(fail_every=1)
    for i in range(2):
        await _post(http, gw.url, chat(f"fails {i}", max_tokens=8))
    m = await _samples(http, gw.url)
    assert m[("kascade_circuit_breaker_state", e1)] == scrape.CIRCUIT_STATES["open"]
    assert m[("kascade_expert_errors_total", (("error", "http_500"), ("expert", "e1")))] == 2


@pytest.mark.parametrize(
    ("window", "start", "end"),
    [
        ("calendar-day", "2026-12-03", "2026-12-04"),
        ("calendar-month", "2026-02-01", "2026-03-01"),
        ("calendar-month", "2026-12-01", "2027-01-01"),
    ],
)
def test_window_end_is_the_next_utc_boundary(window: str, start: str, end: str) -> None:
    def ts(day: str) -> float:
        return float(calendar.timegm(time.strptime(day, "%Y-%m-%d")))

    assert scrape.window_end(window=window, window_start=ts(start), now=ts(start) + 5) == ts(end)


def test_rolling_window_horizon_is_a_day_from_now() -> None:
    assert scrape.window_end(window="rolling-24h", window_start=0, now=1000.0) == 87_400.0


async def test_kascade_status_prints_budgets_routes_and_reasons(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.9)
    expert = await start_sim(name="e1", prompt_tokens=10, completion_tokens=4)
    config = _config(pool.url, expert.url)
    config["policies"]["default"]["cache"] = {"exact": {"ttlSeconds": 60}}
    gw = await start_gateway(config)
    for _ in range(3):  # one local answer, then two cache hits
        await _post(http, gw.url, chat("same", max_tokens=8))
    await _post(http, gw.url, chat("[[confidence=0.1]] hard", max_tokens=8))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kascade.cli", "status", "--url", gw.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    rows = [line.split() for line in text.splitlines()]
    # EXPERT CIRCUIT WINDOW SPENT RESERVED LIMIT LEFT USED
    e1 = next(r for r in rows if r[:1] == ["e1"])
    assert e1[1:6] == ["closed", "calendar-day", "$0.000018", "$0", "$100"], text
    # POLICY REQUESTS LOCAL CACHE EXPERT ERROR CACHE-HIT COST, then POLICY REASONS EXPERTS
    policy, escalations = [r for r in rows if r[:1] == ["default"]]
    assert policy[1:8] == ["4", "1", "2", "1", "0", "50.0%", "$0.000018"], text
    assert escalations[1:] == ["low_confidence=1", "e1=1"], text


async def test_kascade_status_names_an_unreachable_gateway() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kascade.cli", "status", "--url", "http://127.0.0.1:9",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 1
    assert "cannot read the gateway at http://127.0.0.1:9" in err.decode()
