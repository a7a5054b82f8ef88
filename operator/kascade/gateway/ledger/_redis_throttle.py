"""The Redis throttle: limits global across every gateway replica."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from kascade.gateway.ledger import _limits, _lua_throttle, _records, _redis_conn

_ACQUIRE = _redis_conn.Script(name="throttle_acquire", source=_lua_throttle.ACQUIRE)
_RELEASE = _redis_conn.Script(name="throttle_release", source=_lua_throttle.RELEASE)
_BLOCK = _redis_conn.Script(name="throttle_block", source=_lua_throttle.BLOCK)
_STATE = _redis_conn.Script(name="throttle_state", source=_lua_throttle.STATE)


class RedisThrottle:
    """Sliding-log throttle in Redis: at most N requests and T tokens in any 60 s.

    Every acquire is one Lua script: all checks pass or nothing is recorded.
    Concurrency permits expire after ``permit_ttl_s``, so the slots of a crashed
    replica free themselves.
    """

    def __init__(
        self,
        *,
        url: str,
        key_prefix: str = "kascade:",
        permit_ttl_s: float = _limits.DEFAULT_PERMIT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _limits.check_permit_ttl(permit_ttl_s)
        _redis_conn.check_prefix(key_prefix)
        self._conn = _redis_conn.Connection(url=url, scripts=(_ACQUIRE, _RELEASE, _BLOCK, _STATE))
        self._prefix = key_prefix
        self._permit_ttl = permit_ttl_s
        self._clock = clock

    def _base(self, expert: str) -> str:
        _records.check_expert(expert)
        return f"{self._prefix}throttle:{{{expert}}}:"

    async def acquire(
        self,
        *,
        expert: str,
        limits: _records.ThrottleLimits,
        tokens: int,
    ) -> _records.Permit:
        """Admits one call of ``tokens`` tokens, or raises ``Throttled``."""
        _limits.check_tokens(tokens)
        base = self._base(expert)
        pid = secrets.token_hex(12)
        now = self._clock()
        rpm, tpm, maxc = _limits.limit_args(limits)
        code, detail = await self._conn.call(
            _ACQUIRE,
            key=base,
            args=[repr(float(now)), rpm, tpm, maxc, tokens, pid, repr(float(self._permit_ttl))],
        )
        if int(code) != 0:
            raise _limits.throttled(expert=expert, code=int(code), retry_after_s=float(detail))
        return _records.Permit(id=pid, expert=expert, tokens=tokens, acquired_at=now)

    async def release(self, permit: _records.Permit) -> None:
        """Frees the permit's concurrency slot (idempotent)."""
        await self._conn.call(_RELEASE, key=self._base(permit.expert), args=[permit.id])

    async def block_until(self, *, expert: str, until: float) -> None:
        """Refuses acquires for ``expert`` on every replica until ``until``."""
        await self._conn.call(
            _BLOCK, key=self._base(expert), args=[repr(float(until)), repr(float(self._clock()))]
        )

    async def state(self, *, expert: str) -> _records.ThrottleState:
        """Requests and tokens in the last minute, permits in flight, upstream block."""
        requests, tokens, in_flight, blocked = await self._conn.call(
            _STATE, key=self._base(expert), args=[repr(float(self._clock()))]
        )
        return _records.ThrottleState(
            expert=expert,
            requests_last_minute=int(requests),
            tokens_last_minute=int(tokens),
            in_flight=int(in_flight),
            blocked_until=float(blocked) if blocked else None,
        )

    async def close(self) -> None:
        """Closes the Redis connections."""
        await self._conn.close()
