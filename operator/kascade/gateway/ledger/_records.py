"""The value types exchanged with the ledger and the throttles (frozen dataclasses)."""

from __future__ import annotations

import dataclasses
import secrets
import zoneinfo
from typing import Literal, get_args

from kascade.gateway.ledger import _money

Window = Literal["rolling-24h", "calendar-day", "calendar-month"]
"""Budget windows; calendar windows start at midnight in the budget's time zone."""

WINDOWS: tuple[str, ...] = get_args(Window)

DEFAULT_RESERVATION_TTL_S = 15 * 60.0


def check_ttl(reservation_ttl_s: float) -> None:
    """Raises ``ValueError`` unless the reservation TTL is in (0, 24h]."""
    if not 0 < reservation_ttl_s <= 86_400:
        raise ValueError(
            f"reservation_ttl_s must be > 0 and <= 86400 seconds, got {reservation_ttl_s!r}"
        )


def new_reservation_id(request_id: str) -> str:
    """A unique reservation id that still names the request it belongs to."""
    if not isinstance(request_id, str) or not request_id:
        raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
    return f"{request_id[:128]}/{secrets.token_hex(8)}"


# Characters that would break the Redis key layout (hash tags, separators).
_FORBIDDEN_IN_EXPERT = set("{}|: \t\r\n")


def check_expert(expert: str) -> None:
    """Raises ``ValueError`` unless ``expert`` is a usable expert name."""
    if not isinstance(expert, str) or not expert:
        raise ValueError(f"expert must be a non-empty string, got {expert!r}")
    bad = sorted(_FORBIDDEN_IN_EXPERT.intersection(expert))
    if bad or len(expert) > 253:
        raise ValueError(
            f"expert name {expert!r} is not accepted: use at most 253 characters and none of "
            "'{', '}', '|', ':' or whitespace (Kubernetes object names always qualify)"
        )


def check_nanos(name: str, value: int) -> None:
    """Raises ``ValueError`` unless ``value`` is an int in [0, 2**53]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int of nano-USD, got {type(value).__name__}")
    if not 0 <= value <= _money.MAX_NANOS:
        raise ValueError(f"{name} must be between 0 and 2**53 nano-USD, got {value}")


@dataclasses.dataclass(frozen=True)
class Budget:
    """A spending limit in nano-USD per window."""

    limit_nanos: int
    window: Window
    time_zone: str = "UTC"
    """IANA zone in which calendar windows start."""

    def __post_init__(self) -> None:
        check_nanos("Budget.limit_nanos", self.limit_nanos)
        if self.window not in WINDOWS:
            raise ValueError(f"Budget.window {self.window!r} is not one of {', '.join(WINDOWS)}")
        try:
            zoneinfo.ZoneInfo(self.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(
                f"Budget.time_zone {self.time_zone!r} is not an IANA time zone "
                "(e.g. UTC or Europe/Berlin)"
            ) from None


@dataclasses.dataclass(frozen=True)
class Book:
    """Another budget one call must also fit in (a tenant's), held in the same atomic
    step as the expert's: both books hold the amount, or neither does."""

    name: str
    budget: Budget

    def __post_init__(self) -> None:
        check_expert(self.name)


@dataclasses.dataclass(frozen=True)
class Reservation:
    """Worst-case money held for one call until it is settled or released."""

    id: str
    expert: str
    amount_nanos: int
    window_key: str
    created_at: float
    also: tuple[str, ...] = ()
    """Other books holding the same amount under the same id; settled with the expert's."""


@dataclasses.dataclass(frozen=True)
class SpendSnapshot:
    """Spend, outstanding reservations and what is left in the current window."""

    expert: str
    window: Window
    window_start: float
    limit_nanos: int
    spent_nanos: int
    reserved_nanos: int
    remaining_nanos: int
    updated_at: float


@dataclasses.dataclass(frozen=True)
class ThrottleLimits:
    """Per-expert rate limits; ``None`` means unlimited."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_concurrency: int | None

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "max_concurrency"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"ThrottleLimits.{name} must be None (unlimited) or an int >= 1, got {value!r}"
                )


@dataclasses.dataclass(frozen=True)
class Permit:
    """One admitted call; release it when the call ends to free its concurrency slot."""

    id: str
    expert: str
    tokens: int
    acquired_at: float


@dataclasses.dataclass(frozen=True)
class ThrottleState:
    """What the throttle currently counts for an expert."""

    expert: str
    requests_last_minute: int
    tokens_last_minute: int
    in_flight: int
    blocked_until: float | None
