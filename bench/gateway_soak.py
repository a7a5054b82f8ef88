"""Gateway soak: many escalations with large prompts through one gateway process, to
show that its memory stays bounded (ledger tombstones, exact and semantic caches) and
its event loop never stalls.

    .venv/bin/python bench/gateway_soak.py              # 200,000 escalations, 50 KB prompts
    .venv/bin/python bench/gateway_soak.py --quick      # 5,000 (a couple of minutes)

The gateway runs with the in-memory ledger (checkpointed), both caches on (exact cache
bounded to 16 MiB so the steady state comes early) and a rule sending every request to
a simulated expert that echoes the prompt back, so each answer is as large as its
prompt. Every prompt is unique: nothing is a cache hit, everything is stored.
RSS is sampled from /proc every 0.25 s; the baseline is the RSS after the warm-up
(the first 10% of requests, which fill the caches). The stall figure is the
gateway's own `kascade_event_loop_stall_max_seconds`: how late a 5 ms timer fired,
counting only time the loop's thread was on the CPU (observe/loop.py); the lag figure
(`kascade_event_loop_lag_max_seconds`) is the same lateness in wall time, which also
counts the time a busy machine kept the process off the CPU.
Targets: RSS growth after warm-up <= 64 MB, no stall over 50 ms.

The last output line is one JSON object: requests, errors, rps, rss_mb_start,
rss_mb_end, rss_mb_peak, rss_growth_mb, max_event_loop_stall_ms,
max_event_loop_lag_ms, load_avg_1m (at the end, for context).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
            return
        time.sleep(0.05)
    raise TimeoutError(url)


@contextlib.contextmanager
def _proc(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'operator'}:{REPO}"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([PYTHON, *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _config(expert: str, tmp: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "ledger": {"checkpointPath": str(tmp / "spend.json")},
        "pools": {"small": {"endpoint": expert, "model": "unused"}},
        "experts": {
            "e1": {
                "provider": "openai",
                "endpoint": expert,
                "model": "sim",
                "pricing": {"inputPerMillionTokens": 0.001, "outputPerMillionTokens": 0.001},
                "budget": {"limitUSD": 1_000_000, "window": "rolling-24h"},
            }
        },
        "policies": {
            "soak": {
                "localPool": "small",
                "experts": ["e1"],
                "rules": [{"when": {}, "action": "expert"}],
                "cache": {
                    "exact": {"maxEntries": 100_000, "maxBytes": 16 << 20},
                    "semantic": {"maxEntries": 2_000},
                },
            }
        },
    }


async def _load(url: str, *, total: int, concurrency: int, prompt_bytes: int, pid: int) -> Any:
    filler = ("lorem ipsum dolor sit amet " * (prompt_bytes // 27 + 1))[:prompt_bytes]
    state = {"sent": 0, "errors": 0, "peak": 0.0, "start": None}
    warm = max(1, total // 10)

    async def worker(http: aiohttp.ClientSession) -> None:
        while state["sent"] < total:
            state["sent"] += 1
            body = {
                "model": "soak",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"{state['sent']} {filler}"}],
            }
            async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
                await resp.read()
                state["errors"] += resp.status != 200

    async def sample() -> None:
        while True:
            rss = _rss_mb(pid)
            state["peak"] = max(state["peak"], rss)
            if state["start"] is None and state["sent"] >= warm:
                state["start"] = rss
            await asyncio.sleep(0.25)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        sampler.cancel()
        async with http.get(f"{url}/metrics") as resp:
            text = await resp.text()
    return (
        state,
        elapsed,
        _gauge(text, "kascade_event_loop_stall_max_seconds"),
        _gauge(text, "kascade_event_loop_lag_max_seconds"),
    )


def _gauge(text: str, name: str) -> float:
    return next(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--quick", action="store_true", help="5,000 requests")
    p.add_argument("--prompt-bytes", type=int, default=50_000)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    total = 5_000 if args.quick else args.requests
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sim_port, gw_port = _port(), _port()
        sim_args = ["-m", "kascade.simexpert", "--port", str(sim_port), "--name", "e1"]
        sim_args += ["--record-body", "false"]
        expert = f"http://127.0.0.1:{sim_port}"
        config = tmp / "gateway.json"
        config.write_text(json.dumps(_config(expert, tmp)))
        gw_args = ["-m", "kascade.gateway.endpoints.server", "--config", str(config)]
        gw_args += ["--port", str(gw_port), "--log-level", "WARNING"]
        with _proc(sim_args, tmp / "sim.log"), _proc(gw_args, tmp / "gw.log") as gw:
            for url in (expert, f"http://127.0.0.1:{gw_port}"):
                _wait(url + "/healthz")
            state, elapsed, stall, lag = asyncio.run(
                _load(
                    f"http://127.0.0.1:{gw_port}",
                    total=total,
                    concurrency=args.concurrency,
                    prompt_bytes=args.prompt_bytes,
                    pid=gw.pid,
                )
            )
            end = _rss_mb(gw.pid)
    start = state["start"] or end
    print(
        json.dumps(
            {
                "requests": total,
                "errors": state["errors"],
                "rps": round(total / elapsed, 1),
                "prompt_bytes": args.prompt_bytes,
                "rss_mb_start": round(start, 1),
                "rss_mb_end": round(end, 1),
                "rss_mb_peak": round(state["peak"], 1),
                "rss_growth_mb": round(end - start, 1),
                "max_event_loop_stall_ms": round(stall * 1000, 1),
                "max_event_loop_lag_ms": round(lag * 1000, 1),
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
