"""One reservation held in several books (an expert's and a tenant's) atomically, on
both backends: all books hold it or none does, settle and release reach every book,
and under concurrency each book stops at its own limit exactly."""

from __future__ import annotations

import asyncio
import random

import pytest

from kascade.gateway import ledger

EXPERT = ledger.Budget(limit_nanos=1_000, window="calendar-day")
TENANT_A = ledger.Book(
    name="tenant/a", budget=ledger.Budget(limit_nanos=400, window="calendar-month")
)
TENANT_B = ledger.Book(name="tenant/b", budget=ledger.Budget(limit_nanos=600, window="rolling-24h"))


async def _held(led: ledger.Ledger, name: str, budget: ledger.Budget) -> tuple[int, int]:
    snap = await led.snapshot(expert=name, budget=budget)
    return snap.spent_nanos, snap.reserved_nanos


async def test_refusal_by_either_book_holds_nothing_anywhere(make_ledger) -> None:
    led = make_ledger()
    first = await led.reserve(
        expert="e1", budget=EXPERT, amount_nanos=300, request_id="r1", also=(TENANT_A,)
    )
    assert first.also == ("tenant/a",)
    # The tenant refuses (300 + 200 > 400): the expert's book must not keep a hold.
    with pytest.raises(ledger.BudgetExhausted, match="'tenant/a'"):
        await led.reserve(
            expert="e1", budget=EXPERT, amount_nanos=200, request_id="r2", also=(TENANT_A,)
        )
    assert await _held(led, "e1", EXPERT) == (0, 300)
    assert await _held(led, "tenant/a", TENANT_A.budget) == (0, 300)
    # The expert refuses (300 + 600 + 200 > 1000): the tenant's book must not keep a hold.
    other = await led.reserve(expert="e1", budget=EXPERT, amount_nanos=600, request_id="r3")
    with pytest.raises(ledger.BudgetExhausted, match="'e1'"):
        await led.reserve(
            expert="e1", budget=EXPERT, amount_nanos=200, request_id="r4", also=(TENANT_B,)
        )
    assert await _held(led, "tenant/b", TENANT_B.budget) == (0, 0)
    await led.release(other)
    await led.settle(first, actual_nanos=120)
    await led.settle(first, actual_nanos=999)  # idempotent
    assert await _held(led, "e1", EXPERT) == (120, 0)
    assert await _held(led, "tenant/a", TENANT_A.budget) == (120, 0)


async def test_random_schedule_keeps_books_consistent(make_ledger) -> None:
    led = make_ledger()
    rng = random.Random(13)
    open_: list[ledger.Reservation] = []
    for i in range(120):
        if open_ and rng.random() < 0.45:
            res = open_.pop(rng.randrange(len(open_)))
            if rng.random() < 0.5:
                await led.release(res)
            else:
                await led.settle(res, actual_nanos=rng.randint(0, res.amount_nanos))
            continue
        book = rng.choice((TENANT_A, TENANT_B))
        amount = rng.randint(1, 150)
        before = {n: await _held(led, n, b) for n, b in _books(book)}
        try:
            res = await led.reserve(
                expert="e1", budget=EXPERT, amount_nanos=amount, request_id=f"r{i}", also=(book,)
            )
            open_.append(res)
        except ledger.BudgetExhausted as exc:
            limit = dict(_books(book))[exc.expert].limit_nanos
            spent, reserved = before[exc.expert]
            assert spent + reserved + amount > limit  # refused only without room
            for name, budget in _books(book):  # and nothing held anywhere
                assert await _held(led, name, budget) == before[name]
    for res in open_:
        await led.settle(res, actual_nanos=res.amount_nanos)
    expert_spent, _ = await _held(led, "e1", EXPERT)
    a_spent, _ = await _held(led, "tenant/a", TENANT_A.budget)
    b_spent, _ = await _held(led, "tenant/b", TENANT_B.budget)
    assert expert_spent == a_spent + b_spent <= EXPERT.limit_nanos
    assert a_spent <= TENANT_A.budget.limit_nanos
    assert b_spent <= TENANT_B.budget.limit_nanos


def _books(book: ledger.Book) -> list[tuple[str, ledger.Budget]]:
    return [("e1", EXPERT), (book.name, book.budget)]


async def test_concurrent_tenants_each_stop_at_their_limit(make_ledger) -> None:
    led = make_ledger()

    async def one(i: int) -> str:
        book = TENANT_A if i % 2 else TENANT_B
        try:
            await led.reserve(
                expert="e1", budget=EXPERT, amount_nanos=10, request_id=f"c{i}", also=(book,)
            )
        except ledger.BudgetExhausted as exc:
            return exc.expert
        return "held"

    results = await asyncio.gather(*(one(i) for i in range(300)))
    assert results.count("held") == 100  # 40 of tenant a, 60 of tenant b
    assert await _held(led, "tenant/a", TENANT_A.budget) == (0, 400)
    assert await _held(led, "tenant/b", TENANT_B.budget) == (0, 600)
    assert await _held(led, "e1", EXPERT) == (0, 1_000)
