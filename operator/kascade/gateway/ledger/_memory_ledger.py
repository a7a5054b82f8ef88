"""The in-memory ledger: one gateway process, checkpointed to a file."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kascade.gateway.ledger import _books, _checkpoint, _errors, _joint, _records, _windows

logger = logging.getLogger(__name__)


class MemoryLedger:
    """Exact budgets for a single gateway process.

    Every operation runs as one synchronous critical section (no ``await`` inside),
    so concurrent tasks on the event loop can never interleave within a reserve.
    With ``checkpoint_path`` the spend and outstanding reservations are written
    atomically (temp file, fsync, rename) at most ``checkpoint_interval_s`` after
    every change, off the event loop, and once more on ``close()``; on start the file
    is reloaded and reservations of the previous process become worst-case spend.
    """

    def __init__(
        self,
        *,
        checkpoint_path: Path | None = None,
        reservation_ttl_s: float = _records.DEFAULT_RESERVATION_TTL_S,
        checkpoint_interval_s: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _records.check_ttl(reservation_ttl_s)
        if not 0 <= checkpoint_interval_s <= 1:
            raise ValueError(
                "checkpoint_interval_s must be between 0 and 1 seconds, "
                f"got {checkpoint_interval_s!r}"
            )
        self._path = checkpoint_path
        self._ttl = reservation_ttl_s
        self._interval = checkpoint_interval_s
        self._clock = clock
        self._books: dict[str, _books.Books] = {}
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        if checkpoint_path is not None:
            payload = _checkpoint.read(checkpoint_path)
            if payload is not None:
                now = clock()
                self._books = {
                    str(expert): _books.Books.load(data, now=now)
                    for expert, data in payload["experts"].items()
                }

    def _expert_books(self, expert: str) -> _books.Books:
        books = self._books.get(expert)
        if books is None:
            _records.check_expert(expert)
            books = self._books[expert] = _books.Books()
        return books

    def _check_open(self) -> None:
        if self._closed:
            raise _errors.LedgerUnavailable("the in-memory ledger is closed")

    async def reserve(
        self,
        *,
        expert: str,
        budget: _records.Budget,
        amount_nanos: int,
        request_id: str,
        also: tuple[_records.Book, ...] = (),
    ) -> _records.Reservation:
        """Holds ``amount_nanos`` in the expert's book and every book of ``also`` if
        spent + reserved + amount <= limit in each, else BudgetExhausted (nothing held)."""
        self._check_open()
        _records.check_nanos("amount_nanos", amount_nanos)
        rid = _records.new_reservation_id(request_id)
        now = self._clock()
        key = _windows.window_key(window=budget.window, now=now, tz=budget.time_zone)
        # The other books first: when several are full, the caller's own (the tenant's)
        # is the one named in the refusal.
        targets = [
            _joint.Target(
                book.name,
                self._expert_books(book.name),
                _windows.window_key(window=book.budget.window, now=now, tz=book.budget.time_zone),
                book.budget.limit_nanos,
            )
            for book in also
        ]
        targets.append(_joint.Target(expert, self._expert_books(expert), key, budget.limit_nanos))
        refusal = _joint.hold_all(targets, rid=rid, amount=amount_nanos, now=now, ttl=self._ttl)
        if refusal is not None:
            raise _errors.BudgetExhausted(
                expert=refusal.target.name,
                limit_nanos=refusal.target.limit,
                spent_nanos=refusal.spent,
                reserved_nanos=refusal.reserved,
                requested_nanos=amount_nanos,
            )
        self._changed()
        return _records.Reservation(
            id=rid,
            expert=expert,
            amount_nanos=amount_nanos,
            window_key=key,
            created_at=now,
            also=tuple(book.name for book in also),
        )

    async def settle(self, reservation: _records.Reservation, *, actual_nanos: int) -> None:
        """Replaces the reservation by ``actual_nanos`` of spend (idempotent)."""
        self._check_open()
        _records.check_nanos("actual_nanos", actual_nanos)
        now = self._clock()
        changed = False
        for name in (reservation.expert, *reservation.also):
            books = self._expert_books(name)
            changed |= books.finish(
                rid=reservation.id, actual=actual_nanos, state="settled", now=now
            )
        if changed:
            self._changed()

    async def release(self, reservation: _records.Reservation) -> None:
        """Drops the reservation; nothing is spent (idempotent)."""
        self._check_open()
        now = self._clock()
        changed = False
        for name in (reservation.expert, *reservation.also):
            books = self._expert_books(name)
            changed |= books.finish(rid=reservation.id, actual=0, state="released", now=now)
        if changed:
            self._changed()

    async def snapshot(self, *, expert: str, budget: _records.Budget) -> _records.SpendSnapshot:
        """Spend, reservations and remaining money in the current window of ``budget``."""
        self._check_open()
        books = self._expert_books(expert)
        now = self._clock()
        key = _windows.window_key(window=budget.window, now=now, tz=budget.time_zone)
        if books.sweep(now):
            self._changed()
        spent = books.spent(window_key=key, now=now)
        reserved = books.reserved.get(key, 0)
        return _records.SpendSnapshot(
            expert=expert,
            window=budget.window,
            window_start=_windows.window_start(window=budget.window, now=now, tz=budget.time_zone),
            limit_nanos=budget.limit_nanos,
            spent_nanos=spent,
            reserved_nanos=reserved,
            remaining_nanos=max(0, budget.limit_nanos - spent - reserved),
            updated_at=now,
        )

    async def close(self) -> None:
        """Writes the final checkpoint; later calls raise ``LedgerUnavailable``."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await self._writer
        if self._path is not None:
            data = _checkpoint.encode(self._dump())
            await asyncio.to_thread(_checkpoint.write_atomic, self._path, data)

    # -- checkpointing -------------------------------------------------------------

    def _dump(self) -> dict[str, Any]:
        return {
            "saved_at": self._clock(),
            "experts": {expert: books.dump() for expert, books in self._books.items()},
        }

    def _changed(self) -> None:
        if self._path is None:
            return
        self._dirty = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        assert self._path is not None
        while self._dirty:
            self._dirty = False
            # Serialised here, on the loop, so the state is consistent; written off it.
            data = _checkpoint.encode(self._dump())
            try:
                await asyncio.to_thread(_checkpoint.write_atomic, self._path, data)
            except OSError as exc:
                self._dirty = True
                logger.error("Failed to write ledger checkpoint path=%s error=%s", self._path, exc)
            if self._dirty and not self._closed:
                await asyncio.sleep(self._interval)
            elif self._closed:
                return
