"""The Redis ledger: exact budgets shared by every gateway replica."""

from __future__ import annotations

import time
from collections.abc import Callable

from kascade.gateway.ledger import (
    _errors,
    _lua_joint,
    _lua_ledger,
    _records,
    _redis_conn,
    _windows,
)

_RESERVE = _redis_conn.Script(name="ledger_reserve", source=_lua_ledger.RESERVE)
_FINISH = _redis_conn.Script(name="ledger_finish", source=_lua_ledger.FINISH)
_SNAPSHOT = _redis_conn.Script(name="ledger_snapshot", source=_lua_ledger.SNAPSHOT)
_RESERVE_JOINT = _redis_conn.Script(name="ledger_reserve_joint", source=_lua_joint.RESERVE)
_FINISH_JOINT = _redis_conn.Script(name="ledger_finish_joint", source=_lua_joint.FINISH)


class RedisLedger:
    """Exact budgets across replicas: each operation is one Lua script (EVALSHA).

    ``clock`` supplies "now" to the scripts (replica clocks must be NTP-synchronised;
    tests inject a fake clock). Unreachable Redis raises ``LedgerUnavailable`` within
    about a second, so callers fail closed.
    """

    def __init__(
        self,
        *,
        url: str,
        key_prefix: str = "kascade:",
        reservation_ttl_s: float = _records.DEFAULT_RESERVATION_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _records.check_ttl(reservation_ttl_s)
        _redis_conn.check_prefix(key_prefix)
        self._conn = _redis_conn.Connection(
            url=url, scripts=(_RESERVE, _FINISH, _SNAPSHOT, _RESERVE_JOINT, _FINISH_JOINT)
        )
        self._prefix = key_prefix
        self._ttl = reservation_ttl_s
        self._clock = clock

    def _base(self, expert: str) -> str:
        _records.check_expert(expert)
        return f"{self._prefix}ledger:{{{expert}}}:"

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
        spent + reserved + amount <= limit in each (one script), else BudgetExhausted."""
        _records.check_nanos("amount_nanos", amount_nanos)
        rid = _records.new_reservation_id(request_id)
        base = self._base(expert)
        now = self._clock()
        key = _windows.window_key(window=budget.window, now=now, tz=budget.time_zone)
        if also:
            await self._reserve_joint(
                expert=expert, budget=budget, also=also, rid=rid, amount=amount_nanos,
                now=now,
            )  # fmt: skip
        else:
            admitted, spent, reserved = await self._conn.call(
                _RESERVE,
                key=base,
                args=[
                    key,
                    budget.limit_nanos,
                    amount_nanos,
                    rid,
                    repr(now),
                    repr(float(self._ttl)),
                ],
            )
            if int(admitted) != 1:
                raise _errors.BudgetExhausted(
                    expert=expert,
                    limit_nanos=budget.limit_nanos,
                    spent_nanos=int(spent),
                    reserved_nanos=int(reserved),
                    requested_nanos=amount_nanos,
                )
        return _records.Reservation(
            id=rid,
            expert=expert,
            amount_nanos=amount_nanos,
            window_key=key,
            created_at=now,
            also=tuple(book.name for book in also),
        )

    async def _reserve_joint(
        self,
        *,
        expert: str,
        budget: _records.Budget,
        also: tuple[_records.Book, ...],
        rid: str,
        amount: int,
        now: float,
    ) -> None:
        # The other books first: when several are full, the caller's own (the tenant's)
        # is the one named in the refusal.
        names = [*(book.name for book in also), expert]
        budgets = [*(book.budget for book in also), budget]
        args: list[str | int | float] = [amount, rid, repr(now), repr(float(self._ttl))]
        for b in budgets:
            args += [_windows.window_key(window=b.window, now=now, tz=b.time_zone), b.limit_nanos]
        result = await self._conn.call(
            _RESERVE_JOINT,
            key=self._base(names[0]),
            more_keys=tuple(self._base(n) for n in names[1:]),
            args=args,
        )
        refused = int(result[0])
        if refused:
            raise _errors.BudgetExhausted(
                expert=names[refused - 1],
                limit_nanos=budgets[refused - 1].limit_nanos,
                spent_nanos=int(result[1]),
                reserved_nanos=int(result[2]),
                requested_nanos=amount,
            )

    async def _finish(self, reservation: _records.Reservation, *, actual: int, state: str) -> None:
        args: list[str | int | float] = [reservation.id, actual, state, repr(self._clock())]
        base = self._base(reservation.expert)
        if not reservation.also:
            await self._conn.call(_FINISH, key=base, args=args)
            return
        more = tuple(self._base(name) for name in reservation.also)
        await self._conn.call(_FINISH_JOINT, key=base, more_keys=more, args=args)

    async def settle(self, reservation: _records.Reservation, *, actual_nanos: int) -> None:
        """Replaces the reservation by ``actual_nanos`` of spend in all its books (idempotent)."""
        _records.check_nanos("actual_nanos", actual_nanos)
        await self._finish(reservation, actual=actual_nanos, state="settled")

    async def release(self, reservation: _records.Reservation) -> None:
        """Drops the reservation in all its books; nothing is spent (idempotent)."""
        await self._finish(reservation, actual=0, state="released")

    async def snapshot(self, *, expert: str, budget: _records.Budget) -> _records.SpendSnapshot:
        """Spend, reservations and remaining money in the current window of ``budget``."""
        base = self._base(expert)
        now = self._clock()
        key = _windows.window_key(window=budget.window, now=now, tz=budget.time_zone)
        spent_s, reserved_s = await self._conn.call(_SNAPSHOT, key=base, args=[key, repr(now)])
        spent, reserved = int(spent_s), int(reserved_s)
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
        """Closes the Redis connections."""
        await self._conn.close()
