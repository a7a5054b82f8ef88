"""Admission: bounded slots and queue, immediate refusal, no leaked slots."""

from __future__ import annotations

import asyncio

import pytest

from kascade.serving import admission


async def test_slots_then_queue_then_immediate_refusal() -> None:
    adm = admission.Admission(slots=1, max_queued=1, max_wait_s=10)
    first = await adm.acquire()
    waiting = asyncio.create_task(adm.acquire())
    await asyncio.sleep(0)
    assert (adm.in_flight, adm.queued) == (1, 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(admission.Saturated) as info:
        await adm.acquire()
    assert loop.time() - started < 0.05  # refused at once, not after a wait
    assert info.value.retry_after_s >= 1
    assert "1 queued (max 1)" in str(info.value)
    first.release()
    second = await waiting
    assert second.slot == first.slot
    second.release()
    second.release()  # idempotent
    assert (adm.in_flight, adm.queued) == (0, 0)


async def test_queue_wait_is_bounded() -> None:
    adm = admission.Admission(slots=1, max_queued=4, max_wait_s=0.05)
    lease = await adm.acquire()
    with pytest.raises(admission.Saturated, match="waited"):
        await adm.acquire()
    assert adm.queued == 0
    lease.release()
    (await adm.acquire()).release()


async def test_zero_queue_refuses_when_slots_are_busy() -> None:
    adm = admission.Admission(slots=2, max_queued=0, max_wait_s=10)
    a, b = await adm.acquire(), await adm.acquire()
    assert {a.slot, b.slot} == {0, 1}
    with pytest.raises(admission.Saturated):
        await adm.acquire()
    a.release()
    c = await adm.acquire()
    assert c.slot == a.slot


async def test_waiters_are_served_in_order() -> None:
    adm = admission.Admission(slots=1, max_queued=3, max_wait_s=10)
    held = await adm.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        lease = await adm.acquire()
        order.append(i)
        lease.release()

    tasks = [asyncio.create_task(wait(i)) for i in range(3)]
    await asyncio.sleep(0)
    held.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]


async def test_cancelled_waiter_does_not_leak_its_slot() -> None:
    adm = admission.Admission(slots=1, max_queued=2, max_wait_s=10)
    held = await adm.acquire()
    task = asyncio.create_task(adm.acquire())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    held.release()
    assert adm.in_flight == 0
    (await adm.acquire()).release()


def test_retry_after_grows_with_backlog() -> None:
    adm = admission.Admission(slots=1, max_queued=100, max_wait_s=10)
    assert adm.retry_after_s() == 1
    adm._service_s = 2.5
    adm._free.clear()  # one slot busy
    assert adm.retry_after_s() == 3
