"""Config reload: a ConfigMap-style symlink swap goes live within seconds, in-flight
requests finish on the config they started with, invalid configs are ignored."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from tests.integration.gateway.conftest import chat, expert_config, gateway_config, serve

from kascade.gateway import config as config_mod
from kascade.gateway.endpoints import server
from kascade.simexpert import server as sim_server


def _swap(link: Path, data: dict[str, Any] | str, version: str) -> None:
    """What the kubelet does: write a new directory, then atomically repoint `..data`."""
    root = link.parent
    target = root / f"..{version}"
    target.mkdir()
    (target / "config.yaml").write_text(data if isinstance(data, str) else json.dumps(data))
    tmp = root / "..data_tmp"
    tmp.symlink_to(target.name)
    os.replace(tmp, root / "..data")


async def _wait_for(predicate: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_reload_swaps_config_without_dropping_requests(
    start_sim, gw_stack, tmp_path, http, caplog
) -> None:
    pool = await start_sim(name="pool", confidence=0.5, latency_ms=1500)
    expert = await start_sim(name="e1")
    v1 = gateway_config(
        pool=pool.url,
        experts={"e1": expert_config(expert.url)},
        policy={"confidence": {"threshold": 0.3}},
    )
    _swap(tmp_path / "config.yaml", v1, "v1")
    (tmp_path / "config.yaml").symlink_to("..data/config.yaml")
    path = tmp_path / "config.yaml"
    app = server.build_app(config=config_mod.load_config(path), config_path=path, audit_path=None)
    url = await gw_stack.enter_async_context(serve(app))
    state = app[server.STATE]

    # A slow request starts under v1 (threshold 0.3: confidence 0.5 stays local) ...
    slow = asyncio.create_task(http.post(f"{url}/v1/chat/completions", json=chat("slow")))
    # It has reached the pool, so it holds v1's runtime.
    await _wait_for(lambda: pool.app[sim_server.SIM].count == 1)
    # ... while v2 (threshold 0.9, and a new policy) goes live.
    v2 = json.loads(json.dumps(v1))
    v2["policies"]["default"]["confidence"]["threshold"] = 0.9
    v2["policies"]["default"]["generation"] = 4
    v2["policies"]["second"] = {"localPool": "small"}
    _swap(path, v2, "v2")
    await _wait_for(lambda: "second" in state.runtime.policies)
    resp = await slow
    assert resp.status == 200
    assert resp.headers["x-kascade-route"] == "local"
    resp.release()
    pool.set(latency_ms=0)
    async with http.post(f"{url}/v1/chat/completions", json=chat("fast")) as resp:
        assert resp.headers["x-kascade-route"] == "expert:e1"  # 0.5 < 0.9 under v2
    async with http.get(f"{url}/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["default", "second"]

    # An invalid config is logged and ignored: v2 keeps serving.
    bad = json.loads(json.dumps(v2))
    bad["policies"]["default"]["localPool"] = "missing"
    before = state.runtime

    def rejections() -> int:
        return sum("Rejected new gateway config" in r.getMessage() for r in caplog.records)

    # Each bad version is seen by the watcher (its rejection is logged) before the next.
    with caplog.at_level(logging.ERROR, logger="kascade.gateway"):
        _swap(path, bad, "v3")
        await _wait_for(lambda: rejections() == 1)
        _swap(path, "policies: [not, a, mapping", "v4")
        await _wait_for(lambda: rejections() == 2)
    assert state.runtime is before
    async with http.post(f"{url}/v1/chat/completions", json=chat("still here")) as resp:
        assert resp.status == 200
