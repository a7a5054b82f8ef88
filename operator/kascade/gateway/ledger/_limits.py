"""Throttle arithmetic shared by both backends (the Lua scripts mirror it)."""

from __future__ import annotations

from kascade.gateway.ledger import _errors, _records

MINUTE_S = 60.0
DEFAULT_PERMIT_TTL_S = 300.0
# Concurrency slots free when calls end, which cannot be predicted; this is the hint
# given in ``Throttled.retry_after_s`` (capped by the earliest permit expiry).
CONCURRENCY_RETRY_S = 0.1


def check_tokens(tokens: int) -> None:
    """Raises ``ValueError`` unless ``tokens`` is an int >= 0."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be an int >= 0, got {tokens!r}")


def check_permit_ttl(permit_ttl_s: float) -> None:
    """Raises ``ValueError`` unless the permit TTL is in (0, 24h]."""
    if not 0 < permit_ttl_s <= 86_400:
        raise ValueError(f"permit_ttl_s must be > 0 and <= 86400 seconds, got {permit_ttl_s!r}")


def throttled(*, expert: str, code: int, retry_after_s: float) -> _errors.Throttled:
    """The ``Throttled`` error for a refusal code returned by a backend check."""
    limit: _errors.ThrottleLimitName = REFUSALS[code]
    return _errors.Throttled(expert=expert, limit=limit, retry_after_s=max(0.0, retry_after_s))


# Refusal codes, in the order the checks run (shared with the Lua script).
REFUSALS: dict[int, _errors.ThrottleLimitName] = {
    1: "upstream",
    2: "max_concurrency",
    3: "requests_per_minute",
    4: "tokens_per_minute",
}


def limit_args(limits: _records.ThrottleLimits) -> tuple[int, int, int]:
    """Limits as ints for the scripts, 0 meaning unlimited."""
    return (
        limits.requests_per_minute or 0,
        limits.tokens_per_minute or 0,
        limits.max_concurrency or 0,
    )
