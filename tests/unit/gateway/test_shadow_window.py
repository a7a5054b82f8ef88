"""The shadow-call share of an expert's budget follows the budget's window: what shadow
calls spent in one window stops counting when the window rolls over (calendar day in
the budget's time zone, rolling 24h), held reservations count until settled, and a
randomised schedule over several windows never passes share x limit in any window."""

from __future__ import annotations

import calendar
import datetime
import random
import zoneinfo
from pathlib import Path

import aiohttp
import pytest

from kascade.gateway import config as config_mod
from kascade.gateway import ledger
from kascade.gateway.experts import escalation, providers
from kascade.gateway.observe import audit as audit_mod
from kascade.gateway.observe import metrics as metrics_mod
from kascade.gateway.route import shadow

LIMIT = 1000
SHARE = 0.2  # 200 nano-USD of shadow spend per window
TARGET = config_mod.TargetConfig(
    max_local_error_rate=0.1,
    window_labels=1000,
    min_labels=50,
    shadow_fraction=1.0,
    max_shadow_budget_share=SHARE,
)
ZONE = "America/New_York"  # UTC-5 in November: local midnight is 05:00 UTC
TTL = 900.0
"""Reservation TTL: a hold older than this becomes worst-case spend at its expiry."""


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _utc(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0)[:6]))


def _local(zone: str, *parts: int) -> float:
    return datetime.datetime(*parts, tzinfo=zoneinfo.ZoneInfo(zone)).timestamp()


def _arm(quality: shadow.Quality, variant: str | None = None) -> shadow.PolicyQuality:
    return quality.policy(name="chat", variant=variant, target=TARGET)


async def _spend(
    arm: shadow.PolicyQuality, books: ledger.MemoryLedger, budget: ledger.Budget, nanos: int
) -> bool:
    """One shadow call of worst case and actual cost ``nanos``; False when refused."""
    held = await arm.budget.admit(
        ledger_backend=books, expert="e1", budget=budget, worst_nanos=nanos, request_id="r"
    )
    if held is None:
        return False
    await arm.budget.settle(ledger_backend=books, reservation=held, actual_nanos=nanos)
    return True


async def test_a_used_up_share_frees_up_at_local_midnight_of_the_budgets_zone() -> None:
    clock = Clock(_local(ZONE, 2026, 11, 10, 9, 0))
    books = ledger.MemoryLedger(clock=clock)
    budget = ledger.Budget(limit_nanos=LIMIT, window="calendar-day", time_zone=ZONE)
    arm = _arm(shadow.Quality())
    assert await _spend(arm, books, budget, 150)
    assert not await _spend(arm, books, budget, 100)  # 150 + 100 > 200
    clock.now = _utc(2026, 11, 11, 0, 30)  # past UTC midnight, still Nov 10 in New York
    assert not await _spend(arm, books, budget, 100)
    clock.now = _local(ZONE, 2026, 11, 11, 0, 0, 1)  # the budget's day rolled over
    assert await arm.budget.spent(ledger_backend=books, expert="e1", budget=budget) == 0
    assert await _spend(arm, books, budget, 100)
    assert await _spend(arm, books, budget, 100)
    assert not await _spend(arm, books, budget, 1)  # and the new day's share holds


async def test_a_used_up_share_frees_up_as_rolling_spend_ages_past_24_hours() -> None:
    start = _utc(2026, 11, 10, 9, 0)
    clock = Clock(start)
    books = ledger.MemoryLedger(clock=clock)
    budget = ledger.Budget(limit_nanos=LIMIT, window="rolling-24h")
    arm = _arm(shadow.Quality())
    assert await _spend(arm, books, budget, 200)
    clock.now = start + 12 * 3600
    assert not await _spend(arm, books, budget, 1)
    clock.now = start + 86_400 - 120  # still within 24h of the spend
    assert not await _spend(arm, books, budget, 1)
    # The ledger keeps rolling spend in one-minute buckets and counts the oldest
    # minute in full, so the spend drops out within a minute after 24h.
    clock.now = start + 86_400 + 120
    assert await _spend(arm, books, budget, 200)


@pytest.mark.parametrize("window", ["calendar-day", "rolling-24h"])
async def test_a_random_schedule_over_several_windows_never_passes_the_share(
    window: ledger.Window,
) -> None:
    rng = random.Random(41)
    clock = Clock(_local(ZONE, 2026, 11, 10, 0, 0))
    books = ledger.MemoryLedger(clock=clock, reservation_ttl_s=TTL)
    budget = ledger.Budget(limit_nanos=100_000, window=window, time_zone=ZONE)
    quality = shadow.Quality(rng=rng.random)
    arms = [_arm(quality, v) for v in ("a", "b")]  # the arms share one share
    cap = SHARE * budget.limit_nanos
    opened: list[tuple[shadow.PolicyQuality, ledger.Reservation, int, int]] = []
    settled: list[tuple[float, str, int]] = []  # (charged at, admitted-in window, actual)
    admitted_in: dict[str, int] = {}
    refused_in: set[str] = set()
    for _ in range(3000):
        clock.now += rng.uniform(0, 400)  # about a week in all
        day = ledger.window_key(window="calendar-day", now=clock.now, tz=ZONE)  # bookkeeping
        arm = rng.choice(arms)
        if rng.random() < 0.55:
            worst = rng.randint(500, 4000)
            held = await arm.budget.admit(
                ledger_backend=books, expert="e1", budget=budget, worst_nanos=worst, request_id="r"
            )
            if held is None:
                refused_in.add(day)
                continue
            admitted_in[day] = admitted_in.get(day, 0) + 1
            opened.append((arm, held, worst, rng.randint(0, worst)))
        elif opened:  # settle a random open call, possibly in a later window
            owner, held, worst, actual = opened.pop(rng.randrange(len(opened)))
            await owner.budget.settle(ledger_backend=books, reservation=held, actual_nanos=actual)
            # The ledger charges rolling spend when settled, or at expiry if earlier.
            charged_at = min(clock.now, held.created_at + TTL)
            settled.append((charged_at, held.window_key, actual))
        _assert_within_share(window, clock.now, cap, opened, settled)
    # The cap was reached on several days, and each of those days admitted calls again.
    assert len(refused_in) >= 3
    assert all(day in admitted_in for day in refused_in)


def _assert_within_share(
    window: str,
    now: float,
    cap: float,
    opened: list[tuple[shadow.PolicyQuality, ledger.Reservation, int, int]],
    settled: list[tuple[float, str, int]],
) -> None:
    """Shadow spend plus what is held stays within the share in every window: per
    calendar window (a call is charged to the window it was admitted in, as the ledger
    charges the expert), or over the last 24 h (a call counts from when it was charged)."""
    if window == "rolling-24h":
        recent = sum(actual for when, _, actual in settled if when > now - 86_400)
        assert recent + sum(worst for _, _, worst, _ in opened) <= cap
        return
    per_window: dict[str, int] = {}
    for _, key, actual in settled:
        per_window[key] = per_window.get(key, 0) + actual
    for _, held, worst, _ in opened:
        per_window[held.window_key] = per_window.get(held.window_key, 0) + worst
    assert all(total <= cap for total in per_window.values())


async def test_a_reservation_held_across_midnight_is_settled_in_its_own_window() -> None:
    clock = Clock(_local(ZONE, 2026, 11, 10, 23, 59))
    books = ledger.MemoryLedger(clock=clock)
    budget = ledger.Budget(limit_nanos=LIMIT, window="calendar-day", time_zone=ZONE)
    arm = _arm(shadow.Quality())
    late = await arm.budget.admit(
        ledger_backend=books, expert="e1", budget=budget, worst_nanos=150, request_id="late"
    )
    assert late is not None
    assert not await _spend(arm, books, budget, 100)  # the held worst case counts
    clock.now = _local(ZONE, 2026, 11, 11, 0, 1)
    assert await _spend(arm, books, budget, 200)  # a new day: the whole share again
    await arm.budget.settle(ledger_backend=books, reservation=late, actual_nanos=40)
    # The late call is charged to the day it was admitted in: the new day keeps
    # exactly its own 200, and nothing stays held.
    snap = await books.snapshot(
        expert=arm.budget.book(expert="e1", budget=budget).name, budget=budget
    )
    assert (snap.spent_nanos, snap.reserved_nanos) == (200, 0)
    clock.now = _local(ZONE, 2026, 11, 10, 23, 59, 30)  # and the day before has its 40
    snap = await books.snapshot(expert=snap.expert, budget=budget)
    assert (snap.spent_nanos, snap.reserved_nanos) == (40, 0)
    clock.now = _local(ZONE, 2026, 11, 12, 0, 1)
    assert await arm.budget.spent(ledger_backend=books, expert="e1", budget=budget) == 0
    assert await _spend(arm, books, budget, 200)  # no leak into the day after either


def test_sampling_draws_about_the_declared_fraction() -> None:
    budget = shadow.ShadowBudget(
        fraction=0.25, share=1.0, policy="chat", rng=random.Random(6).random
    )
    drawn = sum(budget.sample() for _ in range(4000))
    assert 900 <= drawn <= 1100


async def test_a_shadow_call_is_not_made_while_the_ledger_is_down(tmp_path: Path) -> None:
    books = ledger.MemoryLedger()
    await books.close()  # every operation now raises LedgerUnavailable
    metrics = metrics_mod.Metrics()
    config = config_mod.ExpertConfig.model_validate(
        {
            "provider": "openai",
            "endpoint": "http://127.0.0.1:9",
            "model": "m",
            "pricing": {"inputPerMillionTokens": 1.0, "outputPerMillionTokens": 2.0},
            "budget": {"limitUSD": 1.0, "window": "calendar-day"},
        }
    )
    call = escalation.Call(
        request_id="r",
        messages=[{"role": "user", "content": "hi"}],
        params={},
        requested_max_tokens=10,
        prompt_bound=10,
        prompt_estimate=2,
        raw_personal_data=False,
        max_cost_nanos=None,
    )
    async with aiohttp.ClientSession() as session:
        escalator = escalation.Escalator(
            session=session,
            ledger_backend=books,
            throttle=ledger.MemoryThrottle(),
            credentials=providers.Credentials(),
            metrics=metrics,
        )
        await shadow.shadow_call(
            quality=_arm(shadow.Quality()),
            escalator=escalator,
            expert=escalation.ExpertState.build(name="e1", config=config),
            call=call,
            task=None,
            score=0.9,
            local_text="42",
            metrics=metrics,
            audit=audit_mod.AuditLog(path=str(tmp_path / "audit.jsonl")),
        )
    labels = {"policy": "chat", "variant": "", "expert": "e1"}
    sample = metrics.registry.get_sample_value
    assert sample("kascade_shadow_calls_total", {**labels, "outcome": "ledger_unavailable"}) == 1
    assert sample("kascade_shadow_calls_total", {**labels, "outcome": "failed"}) is None


def test_a_policy_name_too_long_for_a_ledger_key_gets_a_digest_book() -> None:
    budget = ledger.Budget(limit_nanos=LIMIT, window="calendar-day", time_zone=ZONE)
    share = shadow.ShadowBudget(fraction=1.0, share=SHARE, policy="p" * 300)
    e1, e2 = (share.book(expert=e, budget=budget) for e in ("e1", "e2"))
    assert e1.name.startswith(shadow.BOOK_PREFIX)
    assert len(e1.name) <= 253
    assert e1.name != e2.name  # still one book per (policy, expert)
    assert e1.budget == ledger.Budget(limit_nanos=200, window="calendar-day", time_zone=ZONE)
