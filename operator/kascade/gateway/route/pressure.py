"""Inputs of the dynamic threshold: budget burn and expert availability per policy.

Reading them costs ledger round trips, so values are refreshed in the background at
most once per second and requests read the last known figures.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime
import logging
import time
from dataclasses import dataclass

from kascade.gateway import ledger
from kascade.gateway.experts import escalation
from kascade.gateway.observe import metrics as metrics_mod

log = logging.getLogger("kascade.gateway")
REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class ExpertFigures:
    used_fraction: float
    elapsed_fraction: float
    throttled: bool
    exhausted: bool


def elapsed_fraction(*, window: str, window_start: float, now: float) -> float:
    """How far into its window a budget is (1.0 for rolling windows)."""
    if window == "calendar-day":
        return min(1.0, (now - window_start) / 86_400)
    if window == "calendar-month":
        start = datetime.datetime.fromtimestamp(window_start, tz=datetime.UTC)
        days = calendar.monthrange(start.year, start.month)[1]
        return min(1.0, (now - window_start) / (days * 86_400))
    return 1.0


class Pressure:
    """Last known figures per expert, refreshed lazily in the background."""

    def __init__(self, *, escalator: escalation.Escalator, metrics: metrics_mod.Metrics) -> None:
        self._escalator = escalator
        self._metrics = metrics
        self._figures: dict[str, ExpertFigures] = {}
        self._refreshed_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def inputs(self, *, experts: list[escalation.ExpertState]) -> tuple[float | None, float]:
        """(burn, unavailable_fraction) for a policy's experts; see confidence.threshold."""
        if not experts:
            return None, 0.0
        now = time.monotonic()
        used = limit = 0.0
        elapsed = 1.0
        unavailable = 0
        known = False
        for expert in experts:
            if now - self._refreshed_at.get(expert.name, 0.0) > REFRESH_SECONDS:
                self._refreshed_at[expert.name] = now
                task = asyncio.get_running_loop().create_task(self._refresh(expert))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            figures = self._figures.get(expert.name)
            down = not expert.breaker.available()
            if figures is not None:
                known = True
                used += figures.used_fraction * expert.budget.limit_nanos
                limit += expert.budget.limit_nanos
                elapsed = min(elapsed, figures.elapsed_fraction)
                down = down or figures.throttled or figures.exhausted
            unavailable += down
        burn = (used / limit) / max(elapsed, 0.05) if known and limit > 0 else None
        return burn, unavailable / len(experts)

    async def _refresh(self, expert: escalation.ExpertState) -> None:
        try:
            snap = await self._escalator.ledger.snapshot(expert=expert.name, budget=expert.budget)
            state = await self._escalator.throttle.state(expert=expert.name)
        except ledger.LedgerError as exc:
            log.debug("Failed to refresh figures for expert=%s: %s", expert.name, exc)
            return
        now = time.time()
        limit = snap.limit_nanos
        self._figures[expert.name] = ExpertFigures(
            used_fraction=(snap.spent_nanos + snap.reserved_nanos) / limit if limit else 1.0,
            elapsed_fraction=elapsed_fraction(
                window=snap.window, window_start=snap.window_start, now=now
            ),
            throttled=state.blocked_until is not None and state.blocked_until > now,
            exhausted=snap.remaining_nanos <= 0,
        )
        self._metrics.budget_remaining.labels(expert.name).set(
            float(ledger.nanos_to_usd(snap.remaining_nanos))
        )
