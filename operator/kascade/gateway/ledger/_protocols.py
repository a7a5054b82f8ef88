"""What the gateway calls: the ``Ledger`` and ``Throttle`` protocols.

Both backends (memory and Redis) implement them with identical semantics; the
behaviour tests run the same suite over each.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from kascade.gateway.ledger import _records


@runtime_checkable
class Ledger(Protocol):
    """Exact budgets: reserve worst case before a call, settle the actual cost after."""

    async def reserve(
        self,
        *,
        expert: str,
        budget: _records.Budget,
        amount_nanos: int,
        request_id: str,
        also: tuple[_records.Book, ...] = (),
    ) -> _records.Reservation:
        """Holds ``amount_nanos`` if spent + reserved + amount <= limit in the current window.

        With ``also``, the amount is held in the expert's book and every other book in one
        atomic step, or in none. Raises ``BudgetExhausted`` (naming the refusing book)
        otherwise, ``LedgerUnavailable`` if the backend is down.
        """
        ...

    async def settle(self, reservation: _records.Reservation, *, actual_nanos: int) -> None:
        """Replaces the reservation by the actual cost in every book it holds (idempotent
        per reservation id)."""
        ...

    async def release(self, reservation: _records.Reservation) -> None:
        """Drops the reservation: the call failed and nothing was spent (idempotent)."""
        ...

    async def snapshot(self, *, expert: str, budget: _records.Budget) -> _records.SpendSnapshot:
        """Spend, reservations and what remains in the current window of ``budget``."""
        ...

    async def close(self) -> None:
        """Flushes (memory: final checkpoint) and releases connections."""
        ...


@runtime_checkable
class Throttle(Protocol):
    """Global rate limits per expert: requests/min, tokens/min, concurrency, upstream 429."""

    async def acquire(
        self,
        *,
        expert: str,
        limits: _records.ThrottleLimits,
        tokens: int,
    ) -> _records.Permit:
        """Admits one call of ``tokens`` tokens atomically, or raises ``Throttled``."""
        ...

    async def release(self, permit: _records.Permit) -> None:
        """Ends the permit's concurrency slot; its request and tokens stay counted."""
        ...

    async def block_until(self, *, expert: str, until: float) -> None:
        """Refuses every acquire for ``expert`` until ``until`` (epoch seconds)."""
        ...

    async def state(self, *, expert: str) -> _records.ThrottleState:
        """What the throttle currently counts for ``expert``."""
        ...

    async def close(self) -> None:
        """Releases connections."""
        ...
