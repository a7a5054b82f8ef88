"""GET /readyz: whether this replica can enforce budgets with its current config.

503 when no config is loaded or the budget ledger cannot be reached (every escalation
would fail closed). Pool reachability is reported in the body but does not fail the
probe: a replica whose pool is down still answers through experts, and taking every
replica out of its Service would turn a pool outage into a full one.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from typing import Any

from kascade.gateway import ledger
from kascade.gateway.route import pipeline

CHECK_TIMEOUT_S = 0.8


async def _ledger_ok(state: pipeline.State) -> bool:
    experts = [e for n, e in state.experts.items() if n in state.runtime.config.experts]
    if not experts:
        return True  # nothing to enforce
    expert = experts[0]
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await state.escalator.ledger.snapshot(expert=expert.name, budget=expert.budget)
    except (ledger.LedgerError, TimeoutError):
        return False
    return True


async def _reachable(endpoint: str) -> bool:
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            _, writer = await asyncio.open_connection(url.hostname, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def check(state: pipeline.State) -> tuple[bool, dict[str, Any]]:
    """(ready, what was checked)."""
    config = state.runtime.config
    pools = sorted(config.pools)
    results = await asyncio.gather(
        _ledger_ok(state), *(_reachable(config.pools[p].endpoint) for p in pools)
    )
    ledger_ok = bool(results[0])
    config_ok = bool(state.runtime.policies)
    detail: dict[str, Any] = {
        "config": config_ok,
        "ledger": ledger_ok,
        "pools": dict(zip(pools, (bool(r) for r in results[1:]), strict=True)),
    }
    return config_ok and ledger_ok, detail
