"""Money as integer nano-USD, so Python and Redis Lua (doubles) agree exactly."""

from __future__ import annotations

import decimal
import math

NANOS_PER_USD = 1_000_000_000

# Lua numbers are doubles: integers are exact up to 2**53 nanos (about 9 million USD).
MAX_NANOS = 2**53


def usd_to_nanos(value: decimal.Decimal | float | str) -> int:
    """Converts a USD amount to integer nano-USD, rounding UP.

    Rounding up means a worst-case reservation never under-counts. Floats are read
    through their shortest decimal representation (``0.1`` is 100_000_000 nanos, not
    100_000_001). Negative, non-finite or unparsable amounts raise ``ValueError``.
    """
    if isinstance(value, bool):
        raise ValueError(f"USD amount must be a Decimal, float or str, not bool: {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"USD amount must be finite, got {value!r}")
        amount = decimal.Decimal(repr(value))
    elif isinstance(value, int):
        amount = decimal.Decimal(value)
    elif isinstance(value, decimal.Decimal):
        amount = value
    elif isinstance(value, str):
        try:
            amount = decimal.Decimal(value.strip())
        except decimal.InvalidOperation:
            raise ValueError(
                f"USD amount {value!r} is not a decimal number (expected e.g. '0.25')"
            ) from None
    else:
        raise ValueError(f"USD amount must be a Decimal, float or str, got {type(value).__name__}")
    if not amount.is_finite():
        raise ValueError(f"USD amount must be finite, got {value!r}")
    if amount < 0:
        raise ValueError(f"USD amount must be >= 0, got {value!r}")
    nanos = int((amount * NANOS_PER_USD).to_integral_value(rounding=decimal.ROUND_CEILING))
    if nanos > MAX_NANOS:
        raise ValueError(f"USD amount {value!r} exceeds the ledger maximum of 2**53 nano-USD")
    return nanos


def nanos_to_usd(n: int) -> decimal.Decimal:
    """Converts integer nano-USD to an exact ``Decimal`` USD amount."""
    return decimal.Decimal(n).scaleb(-9)
