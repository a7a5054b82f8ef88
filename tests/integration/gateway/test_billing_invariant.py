"""The billing invariant under a hostile expert (docs/ledger.md, "The billing rule").

A seeded schedule of 2,000 requests from concurrent clients, some of which hang up
early, goes through two real gateway processes sharing one real Redis ledger; one
gateway is SIGKILLed and restarted half-way. The simulated experts answer with
scripted faults (slow, hanging, dropped, 4xx/5xx with any Retry-After, missing or
impossible usage) and keep their own bill, counting tokens the way the most hostile
tokenizer could (one per byte, images at the ceiling, max_tokens out). Then, per
expert:

- no under-count: ledger spend (after the dead gateway's reservations expire) >= bill;
- no overspend: bill <= the limit;
- no false refusal: every budget refusal happened with spend + open reservations
  within one request's worst case of the limit;
- every billed request cost at most the worst case the gateway computes for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.integration.gateway.conftest import PYTHON, REPO, gw_free_port, serve

from kascade.gateway import config as config_mod
from kascade.gateway import ledger, redis_source
from kascade.gateway.experts import worst_case
from kascade.simexpert import server as sim_server

SEED = int(os.environ.get("KASCADE_BILLING_SEED", "20261203"))
REQUESTS = 2_000
CLIENTS = 24
TTL_S = 30.0
PRICING = {"inputPerMillionTokens": 1.0, "outputPerMillionTokens": 4.0, "maxTokensPerImage": 1000}
LIMITS_USD = {"alpha": 1.5, "beta": 1.0}
PROVIDERS = {"alpha": "openai", "beta": "anthropic"}
REFUSAL = re.compile(
    r"(\w+): spent (\d+) \+ reserved (\d+) \+ requested (\d+) > limit (\d+) nano-USD"
)
IMAGE = {"type": "image_url", "image_url": {"url": "https://img.example/cat.png"}}

# (weight, fault spec or "" for none); seconds are relative to the timeouts below.
FAULTS = [
    (40, ""),
    (4, "kind=slow_headers seconds=0.01"),
    (4, "kind=slow_headers seconds=0.8"),  # > requestSeconds / firstTokenSeconds
    (4, "kind=slow_chunks seconds=0.01"),
    (4, "kind=slow_chunks seconds=0.5"),  # > idleSeconds when streamed
    (4, "kind=hang_after_headers seconds=0.8"),
    (7, "kind=drop_mid_stream after=1"),
    (2, "kind=status status=429 retry_after=0"),
    (2, "kind=status status=429 retry_after=31536000"),
    (2, "kind=status status=429 retry_after=Wed,_21_Oct_2099_07:28:00_GMT"),
    (4, "kind=status status=500"),
    (4, "kind=status status=503 retry_after=1"),
    (2, "kind=status status=400"),
    (5, "kind=usage_missing"),
    (3, "kind=usage_too_large"),
]


def _expert(name: str, url: str) -> dict[str, Any]:
    return {
        "provider": PROVIDERS[name],
        "endpoint": url,
        "model": f"{name}-model",
        "pricing": PRICING,
        "budget": {"limitUSD": LIMITS_USD[name], "window": "rolling-24h", "onExhausted": "reject"},
        "timeouts": {
            "connectSeconds": 1,
            "requestSeconds": 0.6,
            "firstTokenSeconds": 0.5,
            "idleSeconds": 0.3,
        },
        "retries": {
            "maxAttempts": 3,
            "initialBackoffMillis": 1,
            "maxBackoffMillis": 20,
            "maxRetryAfterSeconds": 0.01,
        },
        "circuitBreaker": {
            "failureThreshold": 40,
            "windowSeconds": 1,
            "openSeconds": 0.05,
            "halfOpenMaxRequests": 2,
        },
    }


def _config(urls: dict[str, str], redis_url: str) -> dict[str, Any]:
    always_expert = [{"when": {}, "action": "expert"}]

    def policy(experts: list[str]) -> dict[str, Any]:
        return {
            "localPool": "small",
            "experts": experts,
            "rules": always_expert,
            "fallback": {"whenExpertsUnavailable": "error"},
        }

    return {
        "version": 1,
        "namespace": "billing",
        "ledger": {"url": redis_url, "reservationTtlSeconds": TTL_S},
        "pools": {"small": {"endpoint": urls["alpha"], "model": "unused"}},
        "experts": {name: _expert(name, url) for name, url in urls.items()},
        "policies": {
            "alpha": policy(["alpha"]),
            "beta": policy(["beta"]),
            "both": policy(["alpha", "beta"]),
        },
    }


@dataclass(frozen=True)
class Planned:
    i: int
    body: dict[str, Any]
    gateway: int
    hang_up_after: float | None


def _schedule(rng: random.Random) -> list[Planned]:
    weights = [w for w, _ in FAULTS]
    plan = []
    for i in range(REQUESTS):
        spec = rng.choices([f for _, f in FAULTS], weights)[0]
        text = f"req-{i} " + "word " * rng.randint(2, 300)
        if spec:
            text += f" [[sim-fault {spec}]]"
        content: Any = text
        if rng.random() < 0.15:
            content = [{"type": "text", "text": text}, IMAGE]
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        if rng.random() < 0.15:
            call = {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": "lookup", "arguments": json.dumps({"q": "x" * 200})},
            }
            messages = [
                {"role": "user", "content": "look it up"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": f"call_{i}", "content": "y" * 100},
                *messages,
            ]
        body = {
            "model": rng.choice(["alpha", "beta", "both"]),
            "messages": messages,
            "max_tokens": rng.randint(8, 200),
            "stream": rng.random() < 0.5,
        }
        hang_up = rng.uniform(0.0, 0.4) if rng.random() < 0.15 else None
        plan.append(Planned(i=i, body=body, gateway=rng.randrange(2), hang_up_after=hang_up))
    return plan


@dataclass
class Seen:
    statuses: collections.Counter[Any] = field(default_factory=collections.Counter)
    refusals: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    streams: list[bytes] = field(default_factory=list)
    done: int = 0


async def _send(http: aiohttp.ClientSession, urls: list[str], p: Planned, seen: Seen) -> None:
    try:
        async with asyncio.timeout(p.hang_up_after):
            try:
                resp, raw = await _post(http, urls[p.gateway], p.body)
            except aiohttp.ClientConnectorError:  # that gateway is down: fail over
                seen.statuses["failed_over"] += 1
                resp, raw = await _post(http, urls[1 - p.gateway], p.body)
    except TimeoutError:
        seen.statuses["hung_up"] += 1
        return
    except aiohttp.ClientError:
        seen.statuses["gateway_lost"] += 1  # the killed gateway had this request
        return
    seen.statuses[resp.status] += 1
    if resp.status == 200 and p.body["stream"]:
        seen.streams.append(raw)
    if resp.status == 429 and b"budget_exhausted" in raw:
        message = json.loads(raw)["error"]["message"]
        for name, *figures in REFUSAL.findall(message):
            spent, reserved, requested, limit = map(int, figures)
            seen.refusals.append((name, spent, reserved, requested, limit))


async def _post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        return resp, await resp.read()


@contextlib.contextmanager
def _gateway(config_path: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    args = [PYTHON, "-m", "kascade.gateway.endpoints.server", "--config", str(config_path)]
    args += ["--port", str(port), "--log-level", "ERROR"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # graceful: pending settlements finish
            proc.wait(timeout=30)


async def _ready(http: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, f"{url} never became healthy"
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{url}/healthz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)


async def _run(
    http: aiohttp.ClientSession, urls: list[str], plan: list[Planned], kill: Any
) -> Seen:
    seen = Seen()
    queue: asyncio.Queue[Planned] = asyncio.Queue()
    for p in plan:
        queue.put_nowait(p)
    half = asyncio.Event()

    async def client() -> None:
        while not queue.empty():
            p = queue.get_nowait()
            await _send(http, urls, p, seen)
            seen.done += 1
            if seen.done == REQUESTS // 2:
                half.set()

    clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    await half.wait()
    await kill()
    await asyncio.gather(*clients)
    return seen


@pytest.mark.redis
async def test_billing_invariant_under_hostile_expert(redis_url: str, tmp_path: Path) -> None:
    sims = {
        name: sim_server.build_app(
            settings=sim_server.Settings(
                name=name,
                token_mode="bytes",
                image_tokens=PRICING["maxTokensPerImage"],
                input_per_million=PRICING["inputPerMillionTokens"],
                output_per_million=PRICING["outputPerMillionTokens"],
            )
        )
        for name in LIMITS_USD
    }
    plan = _schedule(random.Random(SEED))
    async with contextlib.AsyncExitStack() as stack:
        urls = {name: await stack.enter_async_context(serve(app)) for name, app in sims.items()}
        config = _config(urls, redis_url)
        config_mod.parse_config(config)  # fail here, not in a subprocess log
        path = tmp_path / "gateway.json"
        path.write_text(json.dumps(config))
        ports = [gw_free_port(), gw_free_port()]
        gw_urls = [f"http://127.0.0.1:{port}" for port in ports]
        stack.enter_context(_gateway(path, ports[0], tmp_path / "gw-0.log"))
        victim = stack.enter_context(_gateway(path, ports[1], tmp_path / "gw-1.log"))
        http = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        for url in gw_urls:
            await _ready(http, url)

        async def kill() -> None:
            victim.send_signal(signal.SIGKILL)  # mid-flight: its reservations stay open
            await asyncio.to_thread(victim.wait)
            stack.enter_context(_gateway(path, ports[1], tmp_path / "gw-1b.log"))
            await _ready(http, gw_urls[1])

        started = time.monotonic()
        seen = await _run(http, gw_urls, plan, kill)
        elapsed = time.monotonic() - started
    # Gateways stopped (gracefully, except the killed one) and simulators closed.
    summary = {"statuses": dict(seen.statuses), "elapsed_s": round(elapsed, 1)}
    assert seen.done == REQUESTS, summary
    assert seen.statuses[500] == 0, summary  # no internal errors, whatever the expert did
    _check_streams(seen)
    await _check_books(redis_url, sims, seen, summary)


def _check_streams(seen: Seen) -> None:
    """Every stream read to its end ends with [DONE]; a cut one says why first."""
    assert seen.streams
    for raw in seen.streams:
        assert raw.rstrip().endswith(b"data: [DONE]"), raw[-300:]
        if b'"error"' in raw:
            assert raw.index(b'"error"') < raw.rindex(b"data: [DONE]")


async def _check_books(
    redis_url: str, sims: dict[str, Any], seen: Seen, summary: dict[str, Any]
) -> None:
    # Read the books as they stand once every open reservation has expired: the
    # killed gateway's are then worst-case spend (the clock is moved, not waited for).
    reader = ledger.RedisLedger(
        url=redis_url,
        key_prefix=redis_source.key_prefix("billing"),  # the gateways' namespace
        clock=lambda: time.time() + TTL_S + 5,
    )
    pricing = config_mod.Pricing.model_validate(PRICING)
    try:
        for name, app in sims.items():
            sim = app[sim_server.SIM]
            limit = ledger.usd_to_nanos(str(LIMITS_USD[name]))
            budget = ledger.Budget(limit_nanos=limit, window="rolling-24h")
            snap = await reader.snapshot(expert=name, budget=budget)
            figures = {**summary, "expert": name, "bill": sim.bill.summary(), "spent": snap}
            assert snap.reserved_nanos == 0, figures
            assert sim.bill.nanos > 0, figures
            assert snap.spent_nanos >= sim.bill.nanos, figures  # no under-count
            assert sim.bill.nanos <= limit, figures  # no overspend
            worst = _check_bound(sim.records, pricing)
            refusals = [r for r in seen.refusals if r[0] == name]
            assert refusals, figures  # the budget was really reached
            for _, spent, reserved, _requested, lim in refusals:
                assert lim == limit
                assert spent + reserved > limit - worst, figures  # no false refusal
    finally:
        await reader.close()


def _check_bound(records: list[dict[str, Any]], pricing: config_mod.Pricing) -> int:
    """Each billed request cost at most its worst case; returns the largest worst case."""
    largest = 0
    for record in records:
        body = json.dumps(record["body"]).encode()
        bound = worst_case.bound(body=body, pricing=pricing).nanos
        largest = max(largest, bound)
        if "bill_nanos" in record:
            assert record["bill_nanos"] <= bound, record["n"]
    return largest
