"""Budget windows: which window a moment falls in, and when it started.

Calendar windows are keyed by their date in the budget's time zone (``day:2026-11-27``,
``month:2026-11``; UTC unless the budget names an IANA zone), so the key changes
exactly at local midnight (daylight saving included) and spend of the previous window
simply stops counting. The rolling window has one constant key; its spend is kept in
one-minute buckets that age out (see ``docs/ledger.md``).
"""

from __future__ import annotations

import calendar
import datetime
import functools
import time
import zoneinfo

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


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def _local(now: float, tz: str) -> time.struct_time:
    if tz == "UTC":
        return time.gmtime(now)
    return datetime.datetime.fromtimestamp(now, _zone(tz)).timetuple()


def window_key(*, window: str, now: float, tz: str = "UTC") -> str:
    """The key of the window that contains ``now`` (calendar windows in zone ``tz``)."""
    if window == "rolling-24h":
        return ROLLING_KEY
    t = _local(now, tz)
    if window == "calendar-day":
        return f"day:{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
    if window == "calendar-month":
        return f"month:{t.tm_year:04d}-{t.tm_mon:02d}"
    raise ValueError(f"unknown budget window {window!r}")


def window_start(*, window: str, now: float, tz: str = "UTC") -> float:
    """The start (epoch seconds) of the window containing ``now`` (``now - 24h`` when
    rolling; local midnight in zone ``tz`` for calendar windows)."""
    if window == "rolling-24h":
        return now - ROLLING_SPAN_S
    t = _local(now, tz)
    if window == "calendar-day":
        day = t.tm_mday
    elif window == "calendar-month":
        day = 1
    else:
        raise ValueError(f"unknown budget window {window!r}")
    if tz == "UTC":
        return float(calendar.timegm((t.tm_year, t.tm_mon, day, 0, 0, 0)))
    return datetime.datetime(t.tm_year, t.tm_mon, day, tzinfo=_zone(tz)).timestamp()


def keep_seconds(key: str) -> int:
    """How long spend under a calendar ``key`` is kept after it was last written."""
    return DAY_KEEP_S if key.startswith("day:") else MONTH_KEEP_S


def minute(now: float) -> int:
    """The index of the one-minute bucket containing ``now``."""
    return int(now // BUCKET_S)
