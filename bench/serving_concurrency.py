"""Concurrency sweep for bench/serving.py: the Kascade replica vs ``llama-server``.

Both run the same model with the same threads; each point keeps ``c`` requests in
flight for ``seconds`` (a closed loop: a finished request is replaced at once) and
counts completion tokens, requests, latencies and 429s. The Kascade replica is driven
in process through :class:`kascade.serving.server.ChatServer` (no HTTP hop);
``llama-server`` through its HTTP API on localhost.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from kascade.serving import config, server

PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Write a short poem about a lighthouse.",
    "List some tips for staying focused while studying.",
    "What are the main differences between cats and dogs?",
    "Describe how a bicycle works.",
    "Give three reasons to learn a second language.",
    "What is photosynthesis?",
    "Suggest a name for a small bakery and say why.",
]

# One request: (prompt, max_tokens) -> (status, completion tokens).
Send = Callable[[str, int], Awaitable[tuple[int, int]]]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _point(
    send: Send, *, concurrency: int, seconds: float, max_tokens: int
) -> dict[str, Any]:
    latencies: list[float] = []
    tokens = refused = 0
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        nonlocal tokens, refused
        while time.perf_counter() < deadline:
            prompt = PROMPTS[next(counter) % len(PROMPTS)]
            started = time.perf_counter()
            status, n = await send(prompt, max_tokens)
            if status == 429:
                refused += 1
                await asyncio.sleep(0.05)  # a client backs off; do not spin on 429s
                continue
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
            latencies.append(time.perf_counter() - started)
            tokens += n

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]
    return {
        "tokens_per_s": round(tokens / wall, 2),
        "requests_per_s": round(len(latencies) / wall, 3),
        "p50_s": round(statistics.median(ordered), 3),
        "p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
        "rejected_429": refused,
    }


def _kascade_send(chat: server.ChatServer) -> Send:
    async def send(prompt: str, max_tokens: int) -> tuple[int, int]:
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        reply = await chat.handle(
            method="POST", path="/v1/chat/completions", body=json.dumps(body).encode()
        )
        assert isinstance(reply, server.JsonReply)
        n = reply.body["usage"]["completion_tokens"] if reply.status == 200 else 0
        return reply.status, int(n)

    return send


def _llama_server_send(client: httpx.AsyncClient) -> Send:
    async def send(prompt: str, max_tokens: int) -> tuple[int, int]:
        response = await client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
                "max_tokens": max_tokens,
                "n_probs": 2,  # token probabilities, as confidence needs
            },
        )
        n = response.json()["usage"]["completion_tokens"] if response.status_code == 200 else 0
        return response.status_code, int(n)

    return send


async def _sweep(send: Send, *, label: str, levels: list[int], **kw: Any) -> dict[int, Any]:
    await send(PROMPTS[0], 4)  # warm up
    out: dict[int, Any] = {}
    for c in levels:
        out[c] = await _point(send, concurrency=c, **kw)
        _log(f"{label} c={c}: {out[c]}")
    return out


def kascade_sweep(
    *, pool: config.PoolServingConfig, levels: list[int], seconds: float, max_tokens: int
) -> dict[int, Any]:
    """The sweep against one in-process Kascade replica of ``pool``."""
    chat = server.load_server(pool=pool)
    try:
        return asyncio.run(
            _sweep(
                _kascade_send(chat),
                label="kascade",
                levels=levels,
                seconds=seconds,
                max_tokens=max_tokens,
            )
        )
    finally:
        chat.close()


def llama_server_sweep(
    *,
    binary: str,
    model: str,
    threads: int,
    parallel: int,
    context_length: int,
    levels: list[int],
    seconds: float,
    max_tokens: int,
) -> dict[int, Any]:
    """The same sweep against ``llama-server --parallel N`` (continuous batching)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    args = [binary, "-m", model, "-t", str(threads), "-tb", str(threads)]
    args += ["--parallel", str(parallel), "-c", str(context_length * parallel), "--cont-batching"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        async def run() -> dict[int, Any]:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=600) as client:
                while True:
                    if proc.poll() is not None:
                        raise RuntimeError(f"llama-server exited with {proc.returncode}")
                    try:
                        if (await client.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.2)
                return await _sweep(
                    _llama_server_send(client),
                    label="llama-server",
                    levels=levels,
                    seconds=seconds,
                    max_tokens=max_tokens,
                )

        return asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
