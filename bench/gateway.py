"""Gateway speed benchmark: (a) direct calls to a fast simulated expert, (b) a minimal
aiohttp pass-through proxy, (c) the gateway escalating every request through the whole
pipeline (privacy scan, cache miss, rules, ledger reserve/settle, throttle, metrics,
audit). Concurrency 32 throughput and concurrency 1 median latency; the load
generator runs in its own process.

    .venv/bin/python bench/gateway.py [--duration 10]

The last output line is one JSON object with baseline_rps_c32, gateway_rps_c32,
baseline_p50_ms_c1, gateway_p50_ms_c1, direct_p50_ms_c1 (and a few more figures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PYTHON = sys.executable
PROMPT = (
    "Summarise the attached incident report for the on-call channel and list the three "
    "most likely root causes with one mitigation each. Keep it under 120 words. Ref #"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


@contextlib.contextmanager
def _proc(args: list[str], log: Path, *, python: bool = True) -> Iterator[None]:
    with open(log, "wb") as out:
        command = [PYTHON, *args] if python else args
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---- (b) the minimal pass-through proxy -------------------------------------------------


def _proxy_main(port: int, upstream: str) -> None:
    import aiohttp
    import uvloop
    from aiohttp import web

    async def lifecycle(app: web.Application) -> Any:
        app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["s"].close()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        async with request.app["s"].post(
            upstream + "/v1/chat/completions",
            data=body,
            headers={"content-type": "application/json"},
        ) as resp:
            data = await resp.read()
            return web.Response(body=data, status=resp.status, content_type="application/json")

    app = web.Application()
    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/chat/completions", handle)
    app.router.add_get("/healthz", lambda _: _ok())
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                loop=uvloop.new_event_loop())  # fmt: skip


async def _ok() -> Any:
    from aiohttp import web

    return web.Response(text="ok")


# ---- the load generator (its own process) -------------------------------------------------


def _load_main(url: str, model: str, concurrency: int, duration: float) -> None:
    import aiohttp
    import uvloop

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        counter = 0
        # Unique prompts in every phase and round, so the gateway's cache never hits.
        nonce = os.urandom(6).hex()
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker(stop_at: float, record: bool) -> None:
                nonlocal errors, counter
                while time.perf_counter() < stop_at:
                    counter += 1
                    body = json.dumps({
                        "model": model, "max_tokens": 64,
                        "messages": [{"role": "user", "content": f"{PROMPT}{nonce}-{counter}"}],
                    }).encode()  # fmt: skip
                    t0 = time.perf_counter()
                    async with session.post(
                        url, data=body, headers={"content-type": "application/json"}
                    ) as resp:
                        await resp.read()
                        ok = resp.status == 200
                    if record:
                        latencies.append(time.perf_counter() - t0)
                        errors += not ok

            warm = time.perf_counter() + min(1.0, duration / 5)
            await asyncio.gather(*(worker(warm, False) for _ in range(concurrency)))
            start = time.perf_counter()
            await asyncio.gather(*(worker(start + duration, True) for _ in range(concurrency)))
            elapsed = time.perf_counter() - start
        return {
            "requests": len(latencies),
            "errors": errors,
            "rps": len(latencies) / elapsed,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000,
        }

    print(json.dumps(uvloop.run(run())))


def _measure(url: str, model: str, concurrency: int, duration: float) -> dict[str, Any]:
    out = subprocess.run(
        [PYTHON, __file__, "--load", url, model, str(concurrency), str(duration)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise RuntimeError(f"{url}: {result['errors']} non-200 answers")
    return result


def _gateway_config(expert_url: str, pool_url: str) -> dict[str, Any]:
    return {
        "version": 1,
        "namespace": "bench",
        "ledger": {"url": None},
        "pools": {"small": {"endpoint": pool_url, "model": "smol"}},
        "experts": {
            "fast": {
                "provider": "openai",
                "endpoint": expert_url,
                "model": "sim",
                "pricing": {"inputPerMillionTokens": 0.15, "outputPerMillionTokens": 0.6},
                "budget": {"limitUSD": 1_000_000, "window": "calendar-month"},
                "rateLimits": {"requestsPerMinute": 10_000_000, "maxConcurrency": 10_000},
                "retries": {"maxAttempts": 2},
            }
        },
        "policies": {
            "bench": {
                "localPool": "small",
                "experts": ["fast"],
                "rules": [{"when": {"minPromptTokens": 0}, "action": "expert", "target": "fast"}],
                "privacy": {
                    "detectors": ["email", "phone", "credit-card", "iban", "ip-address"],
                    "action": "redact",
                },
                "cache": {"exact": {"ttlSeconds": 60}},
                "audit": {"enabled": True},
            }
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument(
        "--redis",
        action="store_true",
        help="also measure a gateway on the Redis ledger (starts redis-server)",
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kascade-bench-"))
    sim_port, proxy_port, gw_port = _free_port(), _free_port(), _free_port()
    sim = f"http://127.0.0.1:{sim_port}"
    config = tmp / "gateway.json"
    config.write_text(json.dumps(_gateway_config(sim, sim)))
    targets = {
        "direct": (sim, "sim"),
        "baseline": (f"http://127.0.0.1:{proxy_port}", "sim"),
        "gateway": (f"http://127.0.0.1:{gw_port}", "bench"),
    }
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            _proc(["-m", "kascade.simexpert", "--port", str(sim_port), "--name", "fast",
                   "--record-body", "false"], tmp / "sim.log")
        )  # fmt: skip
        stack.enter_context(_proc([__file__, "--proxy", str(proxy_port), sim], tmp / "proxy.log"))
        stack.enter_context(
            _proc(["-m", "kascade.gateway.endpoints.server", "--config", str(config), "--port",
                   str(gw_port), "--audit-log", str(tmp / "audit.jsonl"), "--log-level",
                   "WARNING"], tmp / "gateway.log")
        )  # fmt: skip
        if args.redis:
            targets["gateway_redis"] = _start_redis_gateway(stack, tmp, sim)
        for url, _ in targets.values():
            _wait(url + "/healthz")
        figures = _run(targets, duration=args.duration)
    print(json.dumps(_result(figures, tmp)))
    return 0


def _start_redis_gateway(stack: contextlib.ExitStack, tmp: Path, sim: str) -> tuple[str, str]:
    redis_port, port = _free_port(), _free_port()
    stack.enter_context(
        _proc(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(tmp)], tmp / "redis.log", python=False)
    )  # fmt: skip
    config = _gateway_config(sim, sim)
    config["ledger"] = {"url": f"redis://127.0.0.1:{redis_port}/0"}
    path = tmp / "gateway-redis.json"
    path.write_text(json.dumps(config))
    stack.enter_context(
        _proc(["-m", "kascade.gateway.endpoints.server", "--config", str(path), "--port", str(port),
               "--log-level", "WARNING"], tmp / "gateway-redis.log")
    )  # fmt: skip
    return f"http://127.0.0.1:{port}", "bench"


def _run(targets: dict[str, tuple[str, str]], *, duration: float) -> dict[str, dict[str, Any]]:
    # The machine is shared: phases alternate in rounds so that background load hits
    # every target alike; each figure pools its rounds.
    rounds = 3
    d = duration / rounds
    samples: dict[str, list[dict[str, Any]]] = {}
    for _ in range(rounds):
        for name, (url, model) in targets.items():
            r = _measure(url + "/v1/chat/completions", model, 1, d)
            samples.setdefault(f"{name}_c1", []).append(r)
        for name, (url, model) in targets.items():
            if name != "direct":
                r = _measure(url + "/v1/chat/completions", model, 32, d)
                samples.setdefault(f"{name}_c32", []).append(r)
    figures: dict[str, dict[str, Any]] = {}
    for key, runs in samples.items():
        figures[key] = {
            "requests": sum(r["requests"] for r in runs),
            "rps": statistics.mean(r["rps"] for r in runs),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": max(r["p99_ms"] for r in runs),
            "rounds": [round(r["rps"] if "c32" in key else r["p50_ms"], 3) for r in runs],
        }
        print(f"{key}: {json.dumps(figures[key])}", flush=True)
    return figures


def _result(figures: dict[str, dict[str, Any]], tmp: Path) -> dict[str, Any]:
    audit_lines = len((tmp / "audit.jsonl").read_text().splitlines())
    result: dict[str, Any] = {
        "baseline_rps_c32": round(figures["baseline_c32"]["rps"], 1),
        "gateway_rps_c32": round(figures["gateway_c32"]["rps"], 1),
        "baseline_p50_ms_c1": round(figures["baseline_c1"]["p50_ms"], 3),
        "gateway_p50_ms_c1": round(figures["gateway_c1"]["p50_ms"], 3),
        "direct_p50_ms_c1": round(figures["direct_c1"]["p50_ms"], 3),
        "gateway_vs_baseline_rps": round(
            figures["gateway_c32"]["rps"] / figures["baseline_c32"]["rps"], 3
        ),
        "gateway_added_p50_ms_c1": round(
            figures["gateway_c1"]["p50_ms"] - figures["baseline_c1"]["p50_ms"], 3
        ),
        "gateway_audit_lines": audit_lines,
        "cpus": os.cpu_count(),
    }
    if "gateway_redis_c32" in figures:
        result["gateway_redis_rps_c32"] = round(figures["gateway_redis_c32"]["rps"], 1)
        result["gateway_redis_p50_ms_c1"] = round(figures["gateway_redis_c1"]["p50_ms"], 3)
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        _load_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--proxy":
        _proxy_main(int(sys.argv[2]), sys.argv[3])
    else:
        raise SystemExit(main())
