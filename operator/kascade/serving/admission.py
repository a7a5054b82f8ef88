"""Per-replica admission: a fixed number of generation slots and a bounded wait queue.

A request gets a slot, or waits in a queue of bounded length for at most a bounded
time; otherwise it is refused at once with :class:`Saturated`, which the server
answers as ``429`` with ``Retry-After``. Nothing here queues without bound: the
gateway reads the 429 as "overflow" and escalates.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import time

__all__ = ["Admission", "Lease", "Saturated"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Saturated(Exception):
    """All slots are busy and the queue is full (or the wait ran out)."""

    retry_after_s: int
    reason: str

    def __str__(self) -> str:
        return self.reason


class Lease:
    """A held slot; :meth:`release` is idempotent so every exit path may call it."""

    __slots__ = ("_admission", "_released", "_started", "slot")

    def __init__(self, *, admission: Admission, slot: int) -> None:
        self._admission = admission
        self._released = False
        self._started = time.monotonic()
        self.slot = slot

    def release(self) -> None:
        """Gives the slot back (to the next waiter, if any)."""
        if not self._released:
            self._released = True
            self._admission._release(self.slot, time.monotonic() - self._started)


class Admission:
    """Slots plus a bounded FIFO of waiters; single event loop, no locks needed."""

    def __init__(self, *, slots: int, max_queued: int, max_wait_s: float) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {max_queued}")
        self._free = collections.deque(range(slots))
        self._slots = slots
        self._max_queued = max_queued
        self._max_wait_s = max_wait_s
        self._waiters: collections.deque[asyncio.Future[int]] = collections.deque()
        # Smoothed seconds a slot is held, for an honest Retry-After.
        self._service_s = 1.0

    @property
    def in_flight(self) -> int:
        """Slots held now."""
        return self._slots - len(self._free)

    @property
    def queued(self) -> int:
        """Requests waiting for a slot now."""
        return sum(1 for w in self._waiters if not w.done())

    def retry_after_s(self) -> int:
        """Seconds after which a retry is likely to be admitted (1..60)."""
        backlog = self.in_flight + self.queued
        estimate = self._service_s * max(1, backlog) / self._slots
        return int(min(60, max(1, math.ceil(estimate))))

    async def acquire(self) -> Lease:
        """Takes a slot, waiting in the bounded queue; raises :class:`Saturated` if full."""
        if self._free and not self.queued:
            return Lease(admission=self, slot=self._free.popleft())
        if self.queued >= self._max_queued:
            raise Saturated(
                retry_after_s=self.retry_after_s(),
                reason=f"replica saturated: {self.in_flight} generating, "
                f"{self.queued} queued (max {self._max_queued})",
            )
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            slot = await asyncio.wait_for(asyncio.shield(waiter), timeout=self._max_wait_s)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                # The slot arrived just as the wait ran out: pass it on, do not leak it.
                self._release(waiter.result(), None)
            waiter.cancel()
            raise Saturated(
                retry_after_s=self.retry_after_s(),
                reason=f"replica saturated: waited {self._max_wait_s:.1f}s for a slot",
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result(), None)
            waiter.cancel()
            raise
        return Lease(admission=self, slot=slot)

    def _release(self, slot: int, held_s: float | None) -> None:
        if held_s is not None:
            self._service_s = 0.8 * self._service_s + 0.2 * held_s
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._free.append(slot)
