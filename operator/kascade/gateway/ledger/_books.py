"""One expert's budget books in memory: a pure, synchronous state machine.

It mirrors the Redis Lua scripts (``_lua_ledger.py``) step for step, so both
backends share one set of semantics:

- spend per calendar window key, and for the rolling window a running total over
  one-minute buckets that age out after 24h (charged at the minute of settlement,
  which is never earlier than the reservation: conservative);
- outstanding reservations per window key, each with an expiry; an expired
  reservation becomes spend at its worst-case amount;
- tombstones of *expired* reservations only, so a late settle of an expired
  reservation corrects the worst case to the actual cost once. A settled or released
  reservation leaves nothing behind (a second settle/release finds neither a hold nor
  a tombstone and changes nothing), so memory does not grow with traffic.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
from typing import Any, Literal

from kascade.gateway.ledger import _windows

DoneState = Literal["settled", "released", "expired"]

# Expired reservations are remembered this long, for a late settle to correct them.
DONE_KEEP_S = 2 * 86_400

# The expiry heap keeps the entries of finished reservations until they come due
# (removing one from the middle of a heap is O(n)). Without a bound that is one entry
# per reservation for the whole TTL (15 min at 300 escalations/s: 270,000 entries,
# ~50 MB), so the heap is rebuilt from the live holds once stale entries outnumber
# them by this many. The rebuild walks only the holds (the calls in flight), so its
# cost per reservation stays constant and no loop turn does a large one.
STALE_EXPIRIES_SLACK = 1024


@dataclasses.dataclass
class Held:
    """An outstanding reservation."""

    amount: int
    window_key: str
    created_at: float
    expires_at: float


@dataclasses.dataclass
class Done:
    """A finished reservation: what was charged, where and when."""

    state: DoneState
    charged: int
    window_key: str
    charged_minute: int
    forget_at: float


@dataclasses.dataclass
class Books:
    """Spend and reservations of one expert."""

    held: dict[str, Held] = dataclasses.field(default_factory=dict)
    expiries: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    reserved: dict[str, int] = dataclasses.field(default_factory=dict)
    done: dict[str, Done] = dataclasses.field(default_factory=dict)
    done_order: collections.deque[tuple[float, str]] = dataclasses.field(
        default_factory=collections.deque
    )
    calendar: dict[str, int] = dataclasses.field(default_factory=dict)
    calendar_forget_at: dict[str, float] = dataclasses.field(default_factory=dict)
    # [minute, nanos], minutes strictly increasing.
    buckets: collections.deque[list[int]] = dataclasses.field(default_factory=collections.deque)
    rolling_total: int = 0

    # -- spend -------------------------------------------------------------------

    def _advance_rolling(self, now: float) -> None:
        cutoff = _windows.minute(now) - _windows.ROLLING_BUCKETS
        while self.buckets and self.buckets[0][0] < cutoff:
            self.rolling_total -= self.buckets.popleft()[1]

    def charge(self, *, window_key: str, nanos: int, now: float) -> int:
        """Adds ``nanos`` of spend; returns the minute charged (rolling bucket)."""
        m = _windows.minute(now)
        if window_key == _windows.ROLLING_KEY:
            self._advance_rolling(now)
            if self.buckets and self.buckets[-1][0] >= m:
                # Same minute, or the clock went back: the newest bucket is at least as
                # late, so charging it keeps the spend counted at least as long.
                self.buckets[-1][1] += nanos
                m = self.buckets[-1][0]
            else:
                self.buckets.append([m, nanos])
            self.rolling_total += nanos
        else:
            self.calendar[window_key] = self.calendar.get(window_key, 0) + nanos
            self.calendar_forget_at[window_key] = now + _windows.keep_seconds(window_key)
        return m

    def _adjust(self, *, window_key: str, minute: int, delta: int, now: float) -> int:
        """Corrects earlier spend by ``delta``; returns the minute now holding it."""
        if window_key == _windows.ROLLING_KEY:
            self._advance_rolling(now)
            for bucket in self.buckets:
                if bucket[0] == minute:
                    bucket[1] += delta
                    self.rolling_total += delta
                    return minute
            # The bucket aged out: a refund no longer matters, an extra charge counts now.
            return self.charge(window_key=window_key, nanos=delta, now=now) if delta > 0 else minute
        if window_key in self.calendar:
            self.calendar[window_key] += delta
        elif delta > 0:
            self.charge(window_key=window_key, nanos=delta, now=now)
        return minute

    def spent(self, *, window_key: str, now: float) -> int:
        """Spend recorded in the window ``window_key`` as of ``now``."""
        if window_key == _windows.ROLLING_KEY:
            self._advance_rolling(now)
            return self.rolling_total
        return self.calendar.get(window_key, 0)

    # -- housekeeping ------------------------------------------------------------

    def _finish(
        self, rid: str, *, state: DoneState, charged: int, window_key: str, minute: int, now: float
    ) -> None:
        if state != "expired":
            self.done.pop(rid, None)  # nothing left to correct: no tombstone
            return
        forget_at = now + DONE_KEEP_S
        self.done[rid] = Done(state, charged, window_key, minute, forget_at)
        self.done_order.append((forget_at, rid))

    def _unhold(self, rid: str) -> Held:
        held = self.held.pop(rid)
        left = self.reserved.get(held.window_key, 0) - held.amount
        if left > 0:
            self.reserved[held.window_key] = left
        else:
            self.reserved.pop(held.window_key, None)
        if len(self.expiries) > 2 * len(self.held) + STALE_EXPIRIES_SLACK:
            self._compact_expiries()
        return held

    def _compact_expiries(self) -> None:
        """Drops the heap entries of reservations no longer held (see STALE_EXPIRIES_SLACK)."""
        self.expiries = [(h.expires_at, rid) for rid, h in self.held.items()]
        heapq.heapify(self.expiries)

    def sweep(self, now: float) -> bool:
        """Turns expired reservations into worst-case spend; forgets old records.

        Returns whether any reservation expired (the durable state changed).
        """
        expired = False
        while self.expiries and self.expiries[0][0] <= now:
            expires_at, rid = heapq.heappop(self.expiries)
            held = self.held.get(rid)
            if held is None or held.expires_at != expires_at:
                continue
            self._unhold(rid)
            expired = True
            m = self.charge(window_key=held.window_key, nanos=held.amount, now=now)
            self._finish(
                rid,
                state="expired",
                charged=held.amount,
                window_key=held.window_key,
                minute=m,
                now=now,
            )
        while self.done_order and self.done_order[0][0] <= now:
            _, rid = self.done_order.popleft()
            done = self.done.get(rid)
            if done is not None and done.forget_at <= now:
                del self.done[rid]
        for key in [k for k, t in self.calendar_forget_at.items() if t <= now]:
            del self.calendar_forget_at[key]
            self.calendar.pop(key, None)
        return expired

    # -- operations ----------------------------------------------------------------

    def try_reserve(
        self, *, rid: str, window_key: str, limit: int, amount: int, now: float, ttl: float
    ) -> tuple[bool, int, int]:
        """Holds ``amount`` if it fits; returns (admitted, spent, reserved) before it."""
        self.sweep(now)
        spent = self.spent(window_key=window_key, now=now)
        reserved = self.reserved.get(window_key, 0)
        if spent + reserved + amount > limit:
            return False, spent, reserved
        self.held[rid] = Held(amount, window_key, now, now + ttl)
        heapq.heappush(self.expiries, (now + ttl, rid))
        self.reserved[window_key] = reserved + amount
        return True, spent, reserved

    def finish(self, *, rid: str, actual: int, state: DoneState, now: float) -> bool:
        """Settles (``actual`` spent) or releases (0) ``rid``; False if already finished.

        A reservation already converted to worst-case spend by expiry is corrected to
        the actual cost once, since the caller evidently survived to report it.
        """
        self.sweep(now)
        held = self.held.get(rid)
        if held is not None:
            self._unhold(rid)
            m = self.charge(window_key=held.window_key, nanos=actual, now=now)
            self._finish(
                rid, state=state, charged=actual, window_key=held.window_key, minute=m, now=now
            )
            return True
        done = self.done.get(rid)
        if done is not None and done.state == "expired":
            m = self._adjust(
                window_key=done.window_key,
                minute=done.charged_minute,
                delta=actual - done.charged,
                now=now,
            )
            self._finish(
                rid, state=state, charged=actual, window_key=done.window_key, minute=m, now=now
            )
            return True
        return False

    # -- checkpoint ----------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The durable part: spend and outstanding reservations."""
        return {
            "calendar": self.calendar,
            "calendar_forget_at": self.calendar_forget_at,
            "buckets": [list(b) for b in self.buckets],
            "held": [[h.amount, h.window_key, h.created_at] for h in self.held.values()],
        }

    @classmethod
    def load(cls, data: dict[str, Any], *, now: float) -> Books:
        """Rebuilds books from ``dump()``; reservations of the dead process become spend.

        The process that held them is gone, and its calls may have happened, so each
        is charged at its worst-case amount (never under-counts).
        """
        books = cls()
        books.calendar = {str(k): int(v) for k, v in data["calendar"].items()}
        books.calendar_forget_at = {str(k): float(v) for k, v in data["calendar_forget_at"].items()}
        for m, nanos in data["buckets"]:
            books.buckets.append([int(m), int(nanos)])
            books.rolling_total += int(nanos)
        for amount, window_key, _created_at in data["held"]:
            books.charge(window_key=str(window_key), nanos=int(amount), now=now)
        books.sweep(now)
        return books
