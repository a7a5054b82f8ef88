"""The throttle's semantics, run identically against the memory and Redis backends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from tests.integration.gateway.ledger.conftest import FakeClock

from kascade.gateway import ledger

MakeThrottle = Callable[..., ledger.Throttle]
EXPERT = "claude"


def limits(
    *, rpm: int | None = None, tpm: int | None = None, conc: int | None = None
) -> ledger.ThrottleLimits:
    return ledger.ThrottleLimits(
        requests_per_minute=rpm, tokens_per_minute=tpm, max_concurrency=conc
    )


async def test_requests_per_minute_is_a_sliding_window(
    make_throttle: MakeThrottle, clock: FakeClock
) -> None:
    throttle = make_throttle()
    rpm = limits(rpm=60)
    start = clock.now
    for _ in range(30):
        await throttle.acquire(expert=EXPERT, limits=rpm, tokens=1)
    clock.now = start + 30
    for _ in range(30):
        await throttle.acquire(expert=EXPERT, limits=rpm, tokens=1)
    clock.now = start + 59.5
    with pytest.raises(ledger.Throttled) as refused:
        await throttle.acquire(expert=EXPERT, limits=rpm, tokens=1)
    assert refused.value.limit == "requests_per_minute"
    assert refused.value.expert == EXPERT
    assert refused.value.retry_after_s == pytest.approx(0.5)
    # A minute after the first 30, exactly 30 fit again: never 61 in any 60 s.
    clock.now = start + 60
    for _ in range(30):
        await throttle.acquire(expert=EXPERT, limits=rpm, tokens=1)
    with pytest.raises(ledger.Throttled) as refused:
        await throttle.acquire(expert=EXPERT, limits=rpm, tokens=1)
    assert refused.value.retry_after_s == pytest.approx(30)
    state = await throttle.state(expert=EXPERT)
    assert state.requests_last_minute == 60


async def test_tokens_per_minute_counts_tokens_and_estimates_when_they_fit(
    make_throttle: MakeThrottle, clock: FakeClock
) -> None:
    throttle = make_throttle()
    tpm = limits(tpm=1_000)
    start = clock.now
    await throttle.acquire(expert=EXPERT, limits=tpm, tokens=600)
    clock.now = start + 10
    await throttle.acquire(expert=EXPERT, limits=tpm, tokens=300)
    clock.now = start + 20
    await throttle.acquire(expert=EXPERT, limits=tpm, tokens=100)
    with pytest.raises(ledger.Throttled) as refused:
        await throttle.acquire(expert=EXPERT, limits=tpm, tokens=500)
    assert refused.value.limit == "tokens_per_minute"
    # 500 fits once the 600 from t=0 leaves the window, at t=60.
    assert refused.value.retry_after_s == pytest.approx(40)
    with pytest.raises(ledger.Throttled) as refused:
        await throttle.acquire(expert=EXPERT, limits=tpm, tokens=1_001)
    assert refused.value.retry_after_s == pytest.approx(60)
    clock.now = start + 60
    await throttle.acquire(expert=EXPERT, limits=tpm, tokens=600)
    state = await throttle.state(expert=EXPERT)
    assert (state.requests_last_minute, state.tokens_last_minute) == (3, 1_000)


async def test_a_refused_acquire_records_nothing(
    make_throttle: MakeThrottle, clock: FakeClock
) -> None:
    throttle = make_throttle()
    both = limits(rpm=100, tpm=100)
    await throttle.acquire(expert=EXPERT, limits=both, tokens=90)
    for _ in range(5):
        with pytest.raises(ledger.Throttled):
            await throttle.acquire(expert=EXPERT, limits=both, tokens=20)
    state = await throttle.state(expert=EXPERT)
    assert (state.requests_last_minute, state.tokens_last_minute, state.in_flight) == (1, 90, 1)


async def test_max_concurrency_is_shared_by_replicas_and_freed_by_release(
    replicas: tuple[ledger.Throttle, ledger.Throttle],
) -> None:
    one, two = replicas
    conc = limits(conc=2)
    first = await one.acquire(expert=EXPERT, limits=conc, tokens=0)
    await two.acquire(expert=EXPERT, limits=conc, tokens=0)
    with pytest.raises(ledger.Throttled) as refused:
        await one.acquire(expert=EXPERT, limits=conc, tokens=0)
    assert refused.value.limit == "max_concurrency"
    assert 0 < refused.value.retry_after_s <= 1
    await one.release(first)
    await one.release(first)  # idempotent: frees one slot, not two
    await two.acquire(expert=EXPERT, limits=conc, tokens=0)
    with pytest.raises(ledger.Throttled):
        await two.acquire(expert=EXPERT, limits=conc, tokens=0)
    assert (await one.state(expert=EXPERT)).in_flight == 2


async def test_permits_of_a_crashed_replica_expire(
    make_throttle: MakeThrottle, clock: FakeClock
) -> None:
    throttle = make_throttle(permit_ttl_s=300)
    conc = limits(conc=1)
    await throttle.acquire(expert=EXPERT, limits=conc, tokens=0)  # never released
    clock.advance(299)
    with pytest.raises(ledger.Throttled):
        await throttle.acquire(expert=EXPERT, limits=conc, tokens=0)
    clock.advance(1)
    await throttle.acquire(expert=EXPERT, limits=conc, tokens=0)


async def test_block_until_refuses_every_replica_until_the_upstream_retry_after(
    replicas: tuple[ledger.Throttle, ledger.Throttle], clock: FakeClock
) -> None:
    one, two = replicas
    free = limits()
    await one.block_until(expert=EXPERT, until=clock.now + 30)
    await one.block_until(expert=EXPERT, until=clock.now + 5)  # never shortens a block
    with pytest.raises(ledger.Throttled) as refused:
        await two.acquire(expert=EXPERT, limits=free, tokens=1)
    assert refused.value.limit == "upstream"
    assert refused.value.retry_after_s == pytest.approx(30)
    state = await two.state(expert=EXPERT)
    assert state.blocked_until == pytest.approx(clock.now + 30)
    assert state.requests_last_minute == 0
    await two.acquire(expert="other-expert", limits=free, tokens=1)
    clock.advance(30)
    await two.acquire(expert=EXPERT, limits=free, tokens=1)
    assert (await one.state(expert=EXPERT)).blocked_until is None


async def test_concurrent_acquires_admit_exactly_the_limit(make_throttle: MakeThrottle) -> None:
    throttle = make_throttle()
    rpm = limits(rpm=60, tpm=10_000)

    async def one() -> bool:
        try:
            await throttle.acquire(expert=EXPERT, limits=rpm, tokens=100)
        except ledger.Throttled:
            return False
        return True

    admitted = sum(await asyncio.gather(*(one() for _ in range(200))))
    assert admitted == 60


async def test_unlimited_limits_admit_and_still_count(make_throttle: MakeThrottle) -> None:
    throttle = make_throttle()
    for _ in range(50):
        await throttle.acquire(expert=EXPERT, limits=limits(), tokens=10)
    state = await throttle.state(expert=EXPERT)
    assert (state.requests_last_minute, state.tokens_last_minute, state.in_flight) == (50, 500, 50)


async def test_bad_arguments_are_refused_with_a_clear_message(make_throttle: MakeThrottle) -> None:
    throttle = make_throttle()
    with pytest.raises(ValueError, match="tokens"):
        await throttle.acquire(expert=EXPERT, limits=limits(), tokens=-1)
    with pytest.raises(ValueError, match="expert name"):
        await throttle.acquire(expert="a b", limits=limits(), tokens=1)
    with pytest.raises(ValueError, match="requests_per_minute"):
        limits(rpm=0)


async def test_tokens_retry_estimate_walks_a_long_log(
    make_throttle: MakeThrottle, clock: FakeClock
) -> None:
    throttle = make_throttle()
    tpm = limits(tpm=1_000)
    start = clock.now
    for i in range(250):
        clock.now = start + i * 0.1
        await throttle.acquire(expert=EXPERT, limits=tpm, tokens=4)
    clock.now = start + 30
    with pytest.raises(ledger.Throttled) as refused:
        await throttle.acquire(expert=EXPERT, limits=tpm, tokens=500)
    # 500 tokens fit once the oldest 125 entries (the last at start + 12.4 s) have left.
    assert refused.value.retry_after_s == pytest.approx(12.4 + 60 - 30, abs=1e-3)
