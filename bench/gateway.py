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
def _proc(args: list[str], log: Path) -> Iterator[None]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([PYTHON, *args], stdout=out, stderr=subprocess.STDOUT)
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
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker(stop_at: float, record: bool) -> None:
                nonlocal errors, counter
                while time.perf_counter() < stop_at:
                    counter += 1
                    body = json.dumps({
                        "model": model, "max_tokens": 64,
                        "messages": [{"role": "user", "content": f"{PROMPT}{counter}"}],
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
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kascade-bench-"))
    sim_port, proxy_port, gw_port = _free_port(), _free_port(), _free_port()
    sim = f"http://127.0.0.1:{sim_port}"
    proxy = f"http://127.0.0.1:{proxy_port}"
    gateway = f"http://127.0.0.1:{gw_port}"
    config = tmp / "gateway.json"
    config.write_text(json.dumps(_gateway_config(sim, sim)))
    with (
        _proc(["-m", "kascade.simexpert", "--port", str(sim_port), "--name", "fast",
               "--record-body", "false"], tmp / "sim.log"),
        _proc([__file__, "--proxy", str(proxy_port), sim], tmp / "proxy.log"),
        _proc(["-m", "kascade.gateway.server", "--config", str(config), "--port", str(gw_port),
               "--audit-log", str(tmp / "audit.jsonl"), "--log-level", "WARNING"],
              tmp / "gateway.log"),
    ):  # fmt: skip
        for url in (sim, proxy, gateway):
            _wait(url + "/healthz")
        # The machine is shared: phases alternate in rounds so that background load
        # hits every target alike; each figure pools its rounds.
        rounds = 3
        d = args.duration / rounds
        targets = {
            "direct": (sim, "sim"),
            "baseline": (proxy, "sim"),
            "gateway": (gateway, "bench"),
        }
        samples: dict[str, list[dict[str, Any]]] = {}
        for _ in range(rounds):
            for name, (url, model) in targets.items():
                r = _measure(url + "/v1/chat/completions", model, 1, d)
                samples.setdefault(f"{name}_c1", []).append(r)
            for name in ("baseline", "gateway"):
                url, model = targets[name]
                r = _measure(url + "/v1/chat/completions", model, 32, d)
                samples.setdefault(f"{name}_c32", []).append(r)
        figures: dict[str, dict[str, Any]] = {}
        for key, runs in samples.items():
            figures[key] = {
                "requests": sum(r["requests"] for r in runs),
                "rps": statistics.mean(r["rps"] for r in runs),
                "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                "p99_ms": max(r["p99_ms"] for r in runs),
                "rounds": [round(r["rps"], 1) if "c32" in key else round(r["p50_ms"], 3)
                           for r in runs],
            }  # fmt: skip
            print(f"{key}: {json.dumps(figures[key])}", flush=True)
        audit_lines = len((tmp / "audit.jsonl").read_text().splitlines())
    result = {
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
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        _load_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--proxy":
        _proxy_main(int(sys.argv[2]), sys.argv[3])
    else:
        raise SystemExit(main())
