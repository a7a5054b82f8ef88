"""The ledger's semantics, run identically against the memory and Redis backends."""

from __future__ import annotations

import asyncio
import calendar
from collections.abc import Callable

import pytest
from tests.integration.gateway.ledger.conftest import FakeClock

from kascade.gateway import ledger

MakeLedger = Callable[..., ledger.Ledger]
EXPERT = "gpt-4o"


def day_budget(limit: int) -> ledger.Budget:
    return ledger.Budget(limit_nanos=limit, window="calendar-day")


@pytest.mark.parametrize("window", ["rolling-24h", "calendar-day", "calendar-month"])
async def test_reserve_admits_up_to_the_limit_and_not_one_nano_more(
    make_ledger: MakeLedger, window: ledger.Window
) -> None:
    books = make_ledger()
    budget = ledger.Budget(limit_nanos=1_000, window=window)
    first = await books.reserve(expert=EXPERT, budget=budget, amount_nanos=600, request_id="a")
    assert first.expert == EXPERT
    assert first.amount_nanos == 600
    with pytest.raises(ledger.BudgetExhausted) as refused:
        await books.reserve(expert=EXPERT, budget=budget, amount_nanos=401, request_id="b")
    assert (refused.value.spent_nanos, refused.value.reserved_nanos) == (0, 600)
    assert (refused.value.limit_nanos, refused.value.requested_nanos) == (1_000, 401)
    assert refused.value.expert == EXPERT
    await books.reserve(expert=EXPERT, budget=budget, amount_nanos=400, request_id="c")
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert (snap.spent_nanos, snap.reserved_nanos, snap.remaining_nanos) == (0, 1_000, 0)


async def test_settle_replaces_the_reservation_by_the_actual_cost(
    make_ledger: MakeLedger,
) -> None:
    books = make_ledger()
    budget = day_budget(1_000)
    held = await books.reserve(expert=EXPERT, budget=budget, amount_nanos=800, request_id="a")
    await books.settle(held, actual_nanos=300)
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert (snap.spent_nanos, snap.reserved_nanos, snap.remaining_nanos) == (300, 0, 700)
    # The money freed by the smaller actual cost is available again.
    await books.reserve(expert=EXPERT, budget=budget, amount_nanos=700, request_id="b")


async def test_settle_larger_than_reserved_records_the_truth_and_blocks_further_spend(
    make_ledger: MakeLedger,
) -> None:
    books = make_ledger()
    budget = day_budget(1_000)
    held = await books.reserve(expert=EXPERT, budget=budget, amount_nanos=500, request_id="a")
    await books.settle(held, actual_nanos=1_200)
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert (snap.spent_nanos, snap.reserved_nanos, snap.remaining_nanos) == (1_200, 0, 0)
    with pytest.raises(ledger.BudgetExhausted):
        await books.reserve(expert=EXPERT, budget=budget, amount_nanos=0, request_id="b")


async def test_release_drops_the_reservation_and_spends_nothing(make_ledger: MakeLedger) -> None:
    books = make_ledger()
    budget = day_budget(1_000)
    held = await books.reserve(expert=EXPERT, budget=budget, amount_nanos=1_000, request_id="a")
    await books.release(held)
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert (snap.spent_nanos, snap.reserved_nanos, snap.remaining_nanos) == (0, 0, 1_000)


async def test_settle_and_release_are_idempotent_and_the_first_outcome_wins(
    make_ledger: MakeLedger,
) -> None:
    books = make_ledger()
    budget = day_budget(10_000)
    settled = await books.reserve(expert=EXPERT, budget=budget, amount_nanos=500, request_id="a")
    released = await books.reserve(expert=EXPERT, budget=budget, amount_nanos=700, request_id="a")
    assert settled.id != released.id, "two reservations of one request must not collide"
    await books.settle(settled, actual_nanos=200)
    await books.settle(settled, actual_nanos=200)
    await books.settle(settled, actual_nanos=999)
    await books.release(settled)
    await books.release(released)
    await books.release(released)
    await books.settle(released, actual_nanos=300)
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert (snap.spent_nanos, snap.reserved_nanos) == (200, 0)


async def test_experts_have_separate_books(make_ledger: MakeLedger) -> None:
    books = make_ledger()
    budget = day_budget(100)
    await books.reserve(expert="a", budget=budget, amount_nanos=100, request_id="r")
    await books.reserve(expert="b", budget=budget, amount_nanos=100, request_id="r")
    with pytest.raises(ledger.BudgetExhausted):
        await books.reserve(expert="a", budget=budget, amount_nanos=1, request_id="r")


async def test_calendar_day_rolls_over_at_utc_midnight(
    make_ledger: MakeLedger, clock: FakeClock
) -> None:
    books = make_ledger()
    budget = day_budget(1_000)
    clock.now = float(calendar.timegm((2026, 11, 27, 23, 59, 0)))
    late = await books.reserve(expert=EXPERT, budget=budget, amount_nanos=600, request_id="a")
    spent = await books.reserve(expert=EXPERT, budget=budget, amount_nanos=400, request_id="b")
    await books.settle(spent, actual_nanos=400)
    clock.now = float(calendar.timegm((2026, 11, 27, 23, 59, 59))) + 0.999
    with pytest.raises(ledger.BudgetExhausted):
        await books.reserve(expert=EXPERT, budget=budget, amount_nanos=1, request_id="c")
    clock.now = float(calendar.timegm((2026, 11, 28, 0, 0, 0)))
    # Settled after midnight, the call reserved before it still counts in the old day.
    await books.settle(late, actual_nanos=600)
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert snap.window_start == clock.now
    assert (snap.spent_nanos, snap.reserved_nanos, snap.remaining_nanos) == (0, 0, 1_000)
    await books.reserve(expert=EXPERT, budget=budget, amount_nanos=1_000, request_id="d")


async def test_calendar_month_rolls_over_at_the_utc_month_boundary(
    make_ledger: MakeLedger, clock: FakeClock
) -> None:
    books = make_ledger()
    budget = ledger.Budget(limit_nanos=1_000, window="calendar-month")
    clock.now = float(calendar.timegm((2026, 11, 1, 0, 0, 0)))
    first = await books.reserve(expert=EXPERT, budget=budget, amount_nanos=700, request_id="a")
    await books.settle(first, actual_nanos=700)
    clock.now = float(calendar.timegm((2026, 11, 30, 23, 59, 59)))
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert snap.spent_nanos == 700
    assert snap.window_start == calendar.timegm((2026, 11, 1, 0, 0, 0))
    with pytest.raises(ledger.BudgetExhausted):
        await books.reserve(expert=EXPERT, budget=budget, amount_nanos=301, request_id="b")
    clock.now = float(calendar.timegm((2026, 12, 1, 0, 0, 0)))
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert (snap.spent_nanos, snap.remaining_nanos) == (0, 1_000)


async def test_rolling_window_counts_spend_for_at_least_24h_and_at_most_one_minute_more(
    make_ledger: MakeLedger, clock: FakeClock
) -> None:
    books = make_ledger()
    budget = ledger.Budget(limit_nanos=1_000, window="rolling-24h")
    spent_at = clock.now + 30  # mid-minute
    clock.now = spent_at
    held = await books.reserve(expert=EXPERT, budget=budget, amount_nanos=1_000, request_id="a")
    await books.settle(held, actual_nanos=900)
    clock.now = spent_at + 12 * 3600
    later = await books.reserve(expert=EXPERT, budget=budget, amount_nanos=100, request_id="b")
    await books.settle(later, actual_nanos=100)
    clock.now = spent_at + 86_400  # exactly 24h later: still inside the window
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert snap.spent_nanos == 1_000
    assert snap.window_start == clock.now - 86_400
    with pytest.raises(ledger.BudgetExhausted):
        await books.reserve(expert=EXPERT, budget=budget, amount_nanos=1, request_id="c")
    clock.now = spent_at + 86_400 + 60  # the first spend's minute has aged out
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert (snap.spent_nanos, snap.remaining_nanos) == (100, 900)
    await books.reserve(expert=EXPERT, budget=budget, amount_nanos=900, request_id="d")
    clock.now = spent_at + 36 * 3600 + 60
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    # The 12h spend aged out; the never-settled 900 expired into worst-case spend.
    assert (snap.spent_nanos, snap.reserved_nanos) == (900, 0)


async def test_orphaned_reservation_expires_into_worst_case_spend(
    make_ledger: MakeLedger, clock: FakeClock
) -> None:
    books = make_ledger(reservation_ttl_s=900)
    budget = day_budget(1_000)
    await books.reserve(expert=EXPERT, budget=budget, amount_nanos=400, request_id="crashed")
    clock.advance(899)
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert (snap.spent_nanos, snap.reserved_nanos) == (0, 400)
    clock.advance(1)
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert (snap.spent_nanos, snap.reserved_nanos, snap.remaining_nanos) == (400, 0, 600)
    with pytest.raises(ledger.BudgetExhausted):
        await books.reserve(expert=EXPERT, budget=budget, amount_nanos=601, request_id="b")


@pytest.mark.parametrize("window", ["rolling-24h", "calendar-day"])
async def test_a_late_settle_corrects_an_expired_reservation_once(
    make_ledger: MakeLedger, clock: FakeClock, window: ledger.Window
) -> None:
    books = make_ledger(reservation_ttl_s=60)
    budget = ledger.Budget(limit_nanos=1_000, window=window)
    slow = await books.reserve(expert=EXPERT, budget=budget, amount_nanos=400, request_id="a")
    failed = await books.reserve(expert=EXPERT, budget=budget, amount_nanos=300, request_id="b")
    clock.advance(61)
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert snap.spent_nanos == 700
    await books.settle(slow, actual_nanos=150)
    await books.release(failed)
    await books.settle(slow, actual_nanos=400)
    await books.settle(failed, actual_nanos=300)
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert (snap.spent_nanos, snap.reserved_nanos) == (150, 0)


async def test_reserve_of_the_whole_budget_under_concurrency_admits_exactly_what_fits(
    make_ledger: MakeLedger,
) -> None:
    books = make_ledger()
    budget = day_budget(100 * 7_000)

    async def one(i: int) -> ledger.Reservation | None:
        try:
            return await books.reserve(
                expert=EXPERT, budget=budget, amount_nanos=7_000, request_id=f"r{i}"
            )
        except ledger.BudgetExhausted:
            return None

    held = [r for r in await asyncio.gather(*(one(i) for i in range(300))) if r is not None]
    assert len(held) == 100
    await asyncio.gather(*(books.settle(r, actual_nanos=6_999) for r in held))
    snap = await books.snapshot(expert=EXPERT, budget=budget)
    assert snap.spent_nanos == 100 * 6_999 <= budget.limit_nanos
    assert snap.reserved_nanos == 0


async def test_zero_limit_refuses_everything_but_free_calls(make_ledger: MakeLedger) -> None:
    books = make_ledger()
    budget = day_budget(0)
    with pytest.raises(ledger.BudgetExhausted):
        await books.reserve(expert=EXPERT, budget=budget, amount_nanos=1, request_id="a")
    free = await books.reserve(expert=EXPERT, budget=budget, amount_nanos=0, request_id="b")
    await books.settle(free, actual_nanos=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"expert": "", "amount_nanos": 1, "request_id": "r"}, "expert"),
        ({"expert": "a{b}", "amount_nanos": 1, "request_id": "r"}, "expert name"),
        ({"expert": "a", "amount_nanos": -1, "request_id": "r"}, "amount_nanos"),
        ({"expert": "a", "amount_nanos": 1.5, "request_id": "r"}, "amount_nanos"),
        ({"expert": "a", "amount_nanos": 1, "request_id": ""}, "request_id"),
    ],
)
async def test_bad_arguments_are_refused_with_a_clear_message(
    make_ledger: MakeLedger, kwargs: dict[str, object], message: str
) -> None:
    books = make_ledger()
    with pytest.raises(ValueError, match=message):
        await books.reserve(budget=day_budget(10), **kwargs)  # type: ignore[arg-type]  (bad values on purpose)
