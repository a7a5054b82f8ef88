"""Ledger and throttle errors.

::

    LedgerError
    ├── BudgetExhausted     the reservation would take spend over the budget
    ├── LedgerUnavailable   the backend cannot be reached: fail CLOSED (do not escalate)
    └── Throttled           a rate, token, concurrency or upstream (429) limit is in force
"""

from __future__ import annotations

from typing import Literal

ThrottleLimitName = Literal[
    "requests_per_minute", "tokens_per_minute", "max_concurrency", "upstream"
]


class LedgerError(Exception):
    """Base class of every error raised by the ledger and the throttles."""


class BudgetExhausted(LedgerError):
    """Reserving ``requested_nanos`` would take spend + reservations over the limit."""

    def __init__(
        self,
        *,
        expert: str,
        limit_nanos: int,
        spent_nanos: int,
        reserved_nanos: int,
        requested_nanos: int,
    ) -> None:
        self.expert = expert
        self.limit_nanos = limit_nanos
        self.spent_nanos = spent_nanos
        self.reserved_nanos = reserved_nanos
        self.requested_nanos = requested_nanos
        super().__init__(
            f"budget of expert {expert!r} exhausted: spent {spent_nanos} + reserved "
            f"{reserved_nanos} + requested {requested_nanos} nano-USD > limit {limit_nanos}"
        )


class LedgerUnavailable(LedgerError):
    """The ledger backend is unreachable or too slow; callers must fail closed."""


class Throttled(LedgerError):
    """A throttle refused the call; ``retry_after_s`` estimates when it could pass."""

    def __init__(self, *, expert: str, limit: ThrottleLimitName, retry_after_s: float) -> None:
        self.expert = expert
        self.limit: ThrottleLimitName = limit
        self.retry_after_s = retry_after_s
        super().__init__(
            f"expert {expert!r} throttled by {limit}; retry after {retry_after_s:.3f}s"
        )
