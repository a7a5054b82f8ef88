"""Random operation sequences give identical results on the memory and Redis backends.

The Lua scripts mirror the in-memory state machine step for step; this drives both
with the same operations and the same (fake) clock and compares every observable.
"""

from __future__ import annotations

import random

import pytest
from tests.integration.gateway.ledger.conftest import FakeClock

from kascade.gateway import ledger

pytestmark = pytest.mark.redis

BUDGETS = [
    ledger.Budget(limit_nanos=30_000, window="rolling-24h"),
    ledger.Budget(limit_nanos=40_000, window="calendar-day"),
    ledger.Budget(limit_nanos=60_000, window="calendar-month"),
]
EXPERTS = ["a", "b"]


def step_seconds(rng: random.Random) -> float:
    return rng.choice([0.0, 0.5, 7.0, 59.0, 61.0, 600.0, 3_600.0, 4 * 3_600.0, 13 * 3_600.0])


@pytest.mark.parametrize("seed", range(6))
async def test_ledgers_agree_on_random_sequences(redis_url: str, seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    memory = ledger.MemoryLedger(clock=clock, reservation_ttl_s=900)
    shared = ledger.RedisLedger(url=redis_url, clock=clock, reservation_ttl_s=900)
    outstanding: list[tuple[ledger.Reservation, ledger.Reservation]] = []
    finished: list[tuple[ledger.Reservation, ledger.Reservation]] = []
    try:
        for i in range(400):
            op = rng.random()
            expert = rng.choice(EXPERTS)
            if op < 0.4:
                budget = rng.choice(BUDGETS)
                amount = rng.randint(0, 12_000)
                results: list[object] = []
                for books in (memory, shared):
                    try:
                        results.append(
                            await books.reserve(
                                expert=expert, budget=budget, amount_nanos=amount, request_id=f"{i}"
                            )
                        )
                    except ledger.BudgetExhausted as exc:
                        results.append((exc.spent_nanos, exc.reserved_nanos, exc.requested_nanos))
                m, r = results
                if isinstance(m, ledger.Reservation) or isinstance(r, ledger.Reservation):
                    assert isinstance(m, ledger.Reservation), (i, m, r)
                    assert isinstance(r, ledger.Reservation), (i, m, r)
                    assert (m.window_key, m.amount_nanos) == (r.window_key, r.amount_nanos)
                    outstanding.append((m, r))
                else:
                    assert m == r, i
            elif op < 0.65 and (outstanding or finished):
                late = not outstanding or (finished and rng.random() < 0.15)
                pool = finished if late else outstanding
                pair = (
                    pool.pop(rng.randrange(len(pool))) if pool is outstanding else rng.choice(pool)
                )
                actual = rng.choice(
                    [0, pair[0].amount_nanos, rng.randint(0, 2 * pair[0].amount_nanos + 1)]
                )
                release = rng.random() < 0.3
                both: tuple[ledger.Ledger, ledger.Ledger] = (memory, shared)
                for target, held in zip(both, pair, strict=True):
                    if release:
                        await target.release(held)
                    else:
                        await target.settle(held, actual_nanos=actual)
                if pool is outstanding:
                    finished.append(pair)
            else:
                clock.advance(step_seconds(rng))
            for budget in BUDGETS:
                for name in EXPERTS:
                    m_snap = await memory.snapshot(expert=name, budget=budget)
                    r_snap = await shared.snapshot(expert=name, budget=budget)
                    assert m_snap == r_snap, (seed, i, budget.window, name)
    finally:
        await memory.close()
        await shared.close()


@pytest.mark.parametrize("seed", range(4))
async def test_throttles_agree_on_random_sequences(redis_url: str, seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    memory = ledger.MemoryThrottle(clock=clock, permit_ttl_s=120)
    shared = ledger.RedisThrottle(url=redis_url, clock=clock, permit_ttl_s=120)
    permits: list[tuple[ledger.Permit, ledger.Permit]] = []
    # Varying limits per call, so that each kind of refusal occurs.
    limit_sets = [
        ledger.ThrottleLimits(requests_per_minute=20, tokens_per_minute=2_000, max_concurrency=6),
        ledger.ThrottleLimits(requests_per_minute=12, tokens_per_minute=None, max_concurrency=None),
        ledger.ThrottleLimits(
            requests_per_minute=None, tokens_per_minute=1_500, max_concurrency=None
        ),
    ]
    try:
        for i in range(500):
            op = rng.random()
            if op < 0.55:
                tokens = rng.choice([0, 10, 150, 400, 2_500])
                limits = rng.choice(limit_sets)
                results: list[ledger.Permit | tuple[str, float]] = []
                for throttle in (memory, shared):
                    try:
                        results.append(
                            await throttle.acquire(expert="x", limits=limits, tokens=tokens)
                        )
                    except ledger.Throttled as exc:
                        results.append((exc.limit, exc.retry_after_s))
                m, r = results
                if isinstance(m, ledger.Permit) or isinstance(r, ledger.Permit):
                    assert isinstance(m, ledger.Permit), (i, m, r)
                    assert isinstance(r, ledger.Permit), (i, m, r)
                    permits.append((m, r))
                else:
                    assert m[0] == r[0], (i, m, r)
                    assert m[1] == pytest.approx(r[1], abs=1e-5), (i, m, r)
            elif op < 0.75 and permits:
                pair = permits.pop(rng.randrange(len(permits)))
                await memory.release(pair[0])
                await shared.release(pair[1])
            elif op < 0.78:
                until = clock.now + rng.choice([1.0, 5.0, 30.0])
                await memory.block_until(expert="x", until=until)
                await shared.block_until(expert="x", until=until)
            else:
                clock.advance(rng.choice([0.0, 0.25, 1.0, 3.0, 10.0, 30.0, 61.0]))
            m_state = await memory.state(expert="x")
            r_state = await shared.state(expert="x")
            assert m_state == r_state, (seed, i)
    finally:
        await memory.close()
        await shared.close()
