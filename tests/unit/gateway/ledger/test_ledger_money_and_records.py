"""Money conversion, value validation, windows and the public surface of the ledger."""

from __future__ import annotations

import calendar
import decimal
from pathlib import Path

import pytest

from kascade.gateway import ledger
from kascade.gateway.ledger import _windows


@pytest.mark.parametrize(
    ("value", "nanos"),
    [
        ("0", 0),
        ("1", 1_000_000_000),
        (0.1, 100_000_000),
        ("0.0000000001", 1),  # a tenth of a nano rounds UP, never down
        (decimal.Decimal("2.5e-6"), 2_500),
        ("0.000002500000001", 2_501),
        (" 12.34 ", 12_340_000_000),
        (3, 3_000_000_000),
    ],
)
def test_usd_to_nanos_is_exact_and_rounds_up(
    value: decimal.Decimal | float | str, nanos: int
) -> None:
    assert ledger.usd_to_nanos(value) == nanos


@pytest.mark.parametrize("value", ["-0.01", "abc", float("nan"), float("inf"), "1e10", True])
def test_usd_to_nanos_refuses_what_is_not_money(value: object) -> None:
    with pytest.raises(ValueError, match="USD amount"):
        ledger.usd_to_nanos(value)  # type: ignore[arg-type]  (not money, on purpose)


def test_nanos_to_usd_round_trips() -> None:
    assert ledger.nanos_to_usd(1) == decimal.Decimal("0.000000001")
    assert ledger.nanos_to_usd(ledger.usd_to_nanos("12.345678912")) == decimal.Decimal(
        "12.345678912"
    )


def test_budget_and_limits_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="window 'weekly' is not one of rolling-24h"):
        ledger.Budget(limit_nanos=1, window="weekly")  # type: ignore[arg-type]  (on purpose)
    with pytest.raises(ValueError, match="limit_nanos"):
        ledger.Budget(limit_nanos=-1, window="calendar-day")
    with pytest.raises(ValueError, match="max_concurrency must be None"):
        ledger.ThrottleLimits(requests_per_minute=None, tokens_per_minute=None, max_concurrency=0)


def test_window_keys_change_exactly_at_utc_boundaries() -> None:
    before = float(calendar.timegm((2026, 12, 31, 23, 59, 59))) + 0.999
    after = float(calendar.timegm((2027, 1, 1, 0, 0, 0)))
    assert _windows.window_key(window="calendar-day", now=before) == "day:2026-12-31"
    assert _windows.window_key(window="calendar-day", now=after) == "day:2027-01-01"
    assert _windows.window_key(window="calendar-month", now=before) == "month:2026-12"
    assert _windows.window_key(window="calendar-month", now=after) == "month:2027-01"
    assert _windows.window_key(window="rolling-24h", now=after) == "rolling-24h"
    assert _windows.window_start(window="calendar-month", now=before) == calendar.timegm(
        (2026, 12, 1, 0, 0, 0)
    )
    assert _windows.window_start(window="rolling-24h", now=after) == after - 86_400


def test_public_names_are_exactly_all() -> None:
    public = {name for name in vars(ledger) if not name.startswith("_")}
    assert public == set(ledger.__all__)


async def test_open_backends_chooses_by_url(tmp_path: Path) -> None:
    books, throttle = ledger.open_backends(url=None, checkpoint_path=tmp_path / "c.json")
    assert isinstance(books, ledger.MemoryLedger)
    assert isinstance(throttle, ledger.MemoryThrottle)
    books, throttle = ledger.open_backends(url="memory://", checkpoint_path=None)
    assert isinstance(books, ledger.MemoryLedger)
    books, throttle = ledger.open_backends(url="redis://127.0.0.1:1/0", checkpoint_path=None)
    assert isinstance(books, ledger.RedisLedger)
    assert isinstance(throttle, ledger.RedisThrottle)
    assert isinstance(books, ledger.Ledger)
    assert isinstance(throttle, ledger.Throttle)
    await books.close()
    await throttle.close()
    with pytest.raises(ValueError, match="'memory://'"):
        ledger.open_backends(url="postgres://x", checkpoint_path=None)
