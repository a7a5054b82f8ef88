"""The in-memory throttle: one gateway process."""

from __future__ import annotations

import collections
import dataclasses
import secrets
import time
from collections.abc import Callable

from kascade.gateway.ledger import _errors, _limits, _records


@dataclasses.dataclass
class _Window:
    # (acquired_at, tokens) of admissions in the last minute, oldest first.
    log: collections.deque[tuple[float, int]] = dataclasses.field(default_factory=collections.deque)
    tokens: int = 0
    in_flight: dict[str, float] = dataclasses.field(default_factory=dict)  # id -> expires_at
    blocked_until: float = 0.0

    def prune(self, now: float) -> None:
        horizon = now - _limits.MINUTE_S
        while self.log and self.log[0][0] <= horizon:
            self.tokens -= self.log.popleft()[1]
        for pid in [p for p, exp in self.in_flight.items() if exp <= now]:
            del self.in_flight[pid]


class MemoryThrottle:
    """Sliding-log throttle: at most N requests and T tokens in any 60 s, per expert.

    Each operation is one synchronous critical section on the event loop.
    Concurrency permits expire after ``permit_ttl_s`` if never released.
    """

    def __init__(
        self,
        *,
        permit_ttl_s: float = _limits.DEFAULT_PERMIT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _limits.check_permit_ttl(permit_ttl_s)
        self._permit_ttl = permit_ttl_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._closed = False

    def _window(self, expert: str) -> _Window:
        if self._closed:
            raise _errors.LedgerUnavailable("the in-memory throttle is closed")
        window = self._windows.get(expert)
        if window is None:
            _records.check_expert(expert)
            window = self._windows[expert] = _Window()
        return window

    async def acquire(
        self,
        *,
        expert: str,
        limits: _records.ThrottleLimits,
        tokens: int,
    ) -> _records.Permit:
        """Admits one call of ``tokens`` tokens, or raises ``Throttled``."""
        _limits.check_tokens(tokens)
        w = self._window(expert)
        now = self._clock()
        w.prune(now)
        if w.blocked_until > now:
            raise _limits.throttled(expert=expert, code=1, retry_after_s=w.blocked_until - now)
        if limits.max_concurrency is not None and len(w.in_flight) >= limits.max_concurrency:
            first_free = min(w.in_flight.values()) - now
            raise _limits.throttled(
                expert=expert, code=2, retry_after_s=min(_limits.CONCURRENCY_RETRY_S, first_free)
            )
        rpm = limits.requests_per_minute
        if rpm is not None and len(w.log) >= rpm:
            # The oldest admissions must leave the window before one more fits.
            oldest = w.log[len(w.log) - rpm][0]
            raise _limits.throttled(
                expert=expert, code=3, retry_after_s=oldest + _limits.MINUTE_S - now
            )
        tpm = limits.tokens_per_minute
        if tpm is not None and w.tokens + tokens > tpm:
            raise _limits.throttled(
                expert=expert, code=4, retry_after_s=self._tokens_free_in(w, tokens, tpm, now)
            )
        pid = secrets.token_hex(12)
        w.log.append((now, tokens))
        w.tokens += tokens
        w.in_flight[pid] = now + self._permit_ttl
        return _records.Permit(id=pid, expert=expert, tokens=tokens, acquired_at=now)

    @staticmethod
    def _tokens_free_in(w: _Window, tokens: int, tpm: int, now: float) -> float:
        if tokens > tpm:
            # Can never fit; the caller should not retry this call at all.
            return _limits.MINUTE_S
        left = w.tokens
        for at, n in w.log:
            left -= n
            if left + tokens <= tpm:
                return at + _limits.MINUTE_S - now
        return _limits.MINUTE_S

    async def release(self, permit: _records.Permit) -> None:
        """Frees the permit's concurrency slot (idempotent)."""
        self._window(permit.expert).in_flight.pop(permit.id, None)

    async def block_until(self, *, expert: str, until: float) -> None:
        """Refuses acquires for ``expert`` until ``until``; never shortens a block."""
        w = self._window(expert)
        w.blocked_until = max(w.blocked_until, float(until))

    async def state(self, *, expert: str) -> _records.ThrottleState:
        """Requests and tokens in the last minute, permits in flight, upstream block."""
        w = self._window(expert)
        now = self._clock()
        w.prune(now)
        return _records.ThrottleState(
            expert=expert,
            requests_last_minute=len(w.log),
            tokens_last_minute=w.tokens,
            in_flight=len(w.in_flight),
            blocked_until=w.blocked_until if w.blocked_until > now else None,
        )

    async def close(self) -> None:
        """Marks the throttle closed."""
        self._closed = True
