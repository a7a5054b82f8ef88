"""Helpers for gateway tests: real servers on 127.0.0.1 (in-process aiohttp apps on
real sockets, or real subprocesses), simulated experts, and config builders."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kascade.gateway import config as config_mod
from kascade.gateway.endpoints import server
from kascade.gateway.route import pipeline
from kascade.simexpert import server as sim_server

REPO = Path(__file__).resolve().parents[3]
PYTHON = sys.executable


def gw_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gw_wait_for_http(url: str, *, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


@dataclass
class Sim:
    url: str
    app: web.Application

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.app[sim_server.SIM].records

    def set(self, **settings: Any) -> None:
        sim = self.app[sim_server.SIM]
        for key, value in settings.items():
            setattr(sim.settings, key, value)


@dataclass
class Gateway:
    url: str
    app: web.Application
    config_path: Path
    audit_path: Path

    @property
    def state(self) -> pipeline.State:
        return self.app[server.STATE]

    def audit(self) -> list[dict[str, Any]]:
        self.state.audit.flush()  # lines are buffered for up to 0.2 s
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def gw_stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    async with contextlib.AsyncExitStack() as stack:
        yield stack


@pytest.fixture
def start_sim(gw_stack: contextlib.AsyncExitStack) -> Callable[..., Any]:
    async def start(**settings: Any) -> Sim:
        app = sim_server.build_app(settings=sim_server.Settings(**settings))
        url = await gw_stack.enter_async_context(serve(app))
        return Sim(url=url, app=app)

    return start


@pytest.fixture
def start_gateway(gw_stack: contextlib.AsyncExitStack, tmp_path: Path) -> Callable[..., Any]:
    async def start(config: dict[str, Any], *, name: str = "gw") -> Gateway:
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(config))
        audit = tmp_path / f"{name}-audit.jsonl"
        app = server.build_app(
            config=config_mod.load_config(path), config_path=path, audit_path=str(audit)
        )
        url = await gw_stack.enter_async_context(serve(app))
        return Gateway(url=url, app=app, config_path=path, audit_path=audit)

    return start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def expert_config(url: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "provider": "openai",
        "endpoint": url,
        "model": "sim-model",
        "pricing": {"inputPerMillionTokens": 1.0, "outputPerMillionTokens": 2.0},
        "budget": {"limitUSD": 100.0, "window": "calendar-day"},
        "retries": {"maxAttempts": 1, "initialBackoffMillis": 10, "maxBackoffMillis": 200},
        "timeouts": {"connectSeconds": 2, "requestSeconds": 5},
    }
    return _merge(base, overrides)


def gateway_config(
    *,
    pool: str,
    experts: dict[str, dict[str, Any]],
    policy: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": 1,
        "namespace": "test",
        "pools": {"small": {"endpoint": pool, "model": "smol", "timeoutSeconds": 5}},
        "experts": experts,
        "policies": {
            "default": _merge(
                {"generation": 3, "localPool": "small", "experts": list(experts)},
                policy or {},
            )
        },
    }
    return _merge(base, top)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "default", "messages": [{"role": "user", "content": content}], **extra}


@contextlib.contextmanager
def process(args: list[str], *, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real subprocess (gateway or sim-expert), terminated afterwards."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [PYTHON, *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
