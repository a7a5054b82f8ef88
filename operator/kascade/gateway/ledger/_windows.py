"""Budget windows: which window a moment falls in, and when it started.

Calendar windows are keyed by their UTC date (``day:2026-11-27``, ``month:2026-11``),
so the key changes exactly at the UTC boundary and spend of the previous window
simply stops counting. The rolling window has one constant key; its spend is kept in
one-minute buckets that age out (see ``docs/ledger.md``).
"""

from __future__ import annotations

import calendar
import time

ROLLING_KEY = "rolling-24h"
ROLLING_SPAN_S = 86_400
BUCKET_S = 60
# Buckets counted at minute m: m - ROLLING_BUCKETS .. m. One more than 24h of minutes,
# so that the partial oldest minute is counted in full (conservative: never admits
# a call the exact 24h window would refuse).
ROLLING_BUCKETS = ROLLING_SPAN_S // BUCKET_S

# How long a calendar window's spend is kept after the window ended (for snapshots of
# the recent past and late settles), before it expires.
DAY_KEEP_S = 3 * 86_400
MONTH_KEEP_S = 70 * 86_400


def window_key(*, window: str, now: float) -> str:
    """The key of the window that contains ``now``."""
    if window == "rolling-24h":
        return ROLLING_KEY
    t = time.gmtime(now)
    if window == "calendar-day":
        return f"day:{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
    if window == "calendar-month":
        return f"month:{t.tm_year:04d}-{t.tm_mon:02d}"
    raise ValueError(f"unknown budget window {window!r}")


def window_start(*, window: str, now: float) -> float:
    """The UTC start of the window containing ``now`` (``now - 24h`` when rolling)."""
    if window == "rolling-24h":
        return now - ROLLING_SPAN_S
    t = time.gmtime(now)
    if window == "calendar-day":
        return float(calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)))
    if window == "calendar-month":
        return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))
    raise ValueError(f"unknown budget window {window!r}")


def keep_seconds(key: str) -> int:
    """How long spend under a calendar ``key`` is kept after it was last written."""
    return DAY_KEEP_S if key.startswith("day:") else MONTH_KEEP_S


def minute(now: float) -> int:
    """The index of the one-minute bucket containing ``now``."""
    return int(now // BUCKET_S)
