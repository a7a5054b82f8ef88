"""A separate OS process playing one gateway replica, for the cross-process tests.

Usage: ``python ledger_worker.py '<json spec>'``. Redis modes wait at a barrier in
Redis (so all replicas start together), run, and print one JSON line of results.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import redis.asyncio as redis_asyncio

from kascade.gateway import ledger
from kascade.gateway.ledger import _redis_conn


def be_patient() -> None:
    """Waits for Redis as long as it takes. These tests are about what the scripts admit
    across processes; on a loaded machine the product's sub-second fail-closed timeouts
    would turn some calls into "unavailable" and make them tests of the machine's speed
    (test_ledger_redis_failures.py checks those timeouts)."""
    for name, seconds in (("SOCKET_TIMEOUT_S", 60.0), ("CALL_TIMEOUT_S", 120.0)):
        assert hasattr(_redis_conn, name), f"{name} was renamed: update this worker"
        setattr(_redis_conn, name, seconds)


async def barrier(url: str, name: str) -> None:
    client = redis_asyncio.Redis.from_url(url)
    try:
        await client.incr(f"test:{name}:ready")
        got = await client.blpop([f"test:{name}:go"], timeout=60)
        if got is None:
            raise SystemExit("barrier timed out")
    finally:
        await client.aclose()


async def reserve(spec: dict[str, Any]) -> dict[str, Any]:
    books = ledger.RedisLedger(url=spec["url"])
    budget = ledger.Budget(limit_nanos=spec["limit"], window=spec["window"])
    outcomes: dict[str, int] = {"admitted": 0, "exhausted": 0, "other": 0}
    # Connect and load the scripts before the barrier, so the burst is simultaneous.
    await books.snapshot(expert=spec["expert"], budget=budget)

    async def one(i: int) -> None:
        try:
            held = await books.reserve(
                expert=spec["expert"],
                budget=budget,
                amount_nanos=spec["amount"],
                request_id=f"w{spec['worker']}-{i}",
            )
        except ledger.BudgetExhausted:
            outcomes["exhausted"] += 1
            return
        except ledger.LedgerError:
            outcomes["other"] += 1
            return
        outcomes["admitted"] += 1
        await asyncio.sleep(0.01)  # the "expert call"
        await books.settle(held, actual_nanos=spec["actual"])

    await barrier(spec["url"], spec["barrier"])
    await asyncio.gather(*(one(i) for i in range(spec["n"])))
    await books.close()
    return outcomes


async def acquire(spec: dict[str, Any]) -> dict[str, Any]:
    throttle = ledger.RedisThrottle(url=spec["url"])
    limits = ledger.ThrottleLimits(
        requests_per_minute=spec.get("rpm"),
        tokens_per_minute=spec.get("tpm"),
        max_concurrency=spec.get("conc"),
    )
    await throttle.state(expert=spec["expert"])
    admitted: list[float] = []
    refused: dict[str, int] = {}
    most_in_flight = 0
    # Counts holders between a granted acquire and its release, as seen by Redis.
    counter = redis_asyncio.Redis.from_url(spec["url"])

    async def one() -> None:
        nonlocal most_in_flight
        try:
            permit = await throttle.acquire(
                expert=spec["expert"], limits=limits, tokens=spec["tokens"]
            )
        except ledger.Throttled as exc:
            refused[exc.limit] = refused.get(exc.limit, 0) + 1
            return
        admitted.append(permit.acquired_at)
        if spec.get("hold_s"):
            holders = await counter.incr(f"test:{spec['barrier']}:in-flight")
            most_in_flight = max(most_in_flight, holders)
            await asyncio.sleep(spec["hold_s"])
            await counter.decr(f"test:{spec['barrier']}:in-flight")
            await throttle.release(permit)

    await barrier(spec["url"], spec["barrier"])
    # A fixed number of bursts, not a duration: the same contention however slow the
    # machine (each burst starts once the previous one released its permits).
    for _ in range(spec["rounds"]):
        await asyncio.gather(*(one() for _ in range(spec["burst"])))
    await throttle.close()
    await counter.aclose()
    return {"admitted": admitted, "refused": refused, "most_in_flight": most_in_flight}


async def memory_crash(spec: dict[str, Any]) -> None:
    books = ledger.MemoryLedger(checkpoint_path=Path(spec["checkpoint"]))
    budget = ledger.Budget(limit_nanos=10_000, window="calendar-month")
    for i, actual in enumerate((100, 200)):
        held = await books.reserve(expert="e", budget=budget, amount_nanos=400, request_id=f"{i}")
        await books.settle(held, actual_nanos=actual)
    await books.reserve(expert="e", budget=budget, amount_nanos=500, request_id="in-flight")
    print("ready", flush=True)
    await asyncio.sleep(3600)  # killed here with SIGKILL, never closed


def main() -> None:
    spec = json.loads(sys.argv[1])
    mode = spec["mode"]
    be_patient()
    if mode == "memory-crash":
        asyncio.run(memory_crash(spec))
        return
    result = asyncio.run(reserve(spec) if mode == "reserve" else acquire(spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
