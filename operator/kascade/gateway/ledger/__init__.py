"""Exact budgets and global throttles for calls to cloud experts.

Money is integer nano-USD everywhere (``usd_to_nanos`` / ``nanos_to_usd``). Two
backends with identical semantics: in memory (one replica, checkpointed to a file)
and Redis (several replicas, one Lua script per operation). See ``docs/ledger.md``.

Errors::

    LedgerError
    ├── BudgetExhausted     spent + reserved + requested would exceed the limit
    ├── LedgerUnavailable   backend unreachable: fail CLOSED (do not escalate)
    └── Throttled           requests/min, tokens/min, concurrency or upstream 429
"""

from kascade.gateway.ledger._errors import (
    BudgetExhausted,
    LedgerError,
    LedgerUnavailable,
    Throttled,
)
from kascade.gateway.ledger._factory import open_backends
from kascade.gateway.ledger._memory_ledger import MemoryLedger
from kascade.gateway.ledger._memory_throttle import MemoryThrottle
from kascade.gateway.ledger._money import MAX_NANOS, nanos_to_usd, usd_to_nanos
from kascade.gateway.ledger._protocols import Ledger, Throttle
from kascade.gateway.ledger._records import (
    Book,
    Budget,
    Permit,
    Reservation,
    SpendSnapshot,
    ThrottleLimits,
    ThrottleState,
    Window,
)
from kascade.gateway.ledger._redis_ledger import RedisLedger
from kascade.gateway.ledger._redis_throttle import RedisThrottle
from kascade.gateway.ledger._windows import window_key

__all__ = [
    "MAX_NANOS",
    "Book",
    "Budget",
    "BudgetExhausted",
    "Ledger",
    "LedgerError",
    "LedgerUnavailable",
    "MemoryLedger",
    "MemoryThrottle",
    "Permit",
    "RedisLedger",
    "RedisThrottle",
    "Reservation",
    "SpendSnapshot",
    "Throttle",
    "ThrottleLimits",
    "ThrottleState",
    "Throttled",
    "Window",
    "nanos_to_usd",
    "open_backends",
    "usd_to_nanos",
    "window_key",
]
