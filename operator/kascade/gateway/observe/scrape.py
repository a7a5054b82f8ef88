"""Figures read at scrape time rather than per request: each expert's budget window
(from the ledger, shared across replicas with Redis), its circuit breaker, and whether
the ledger answered at all."""

from __future__ import annotations

import calendar
import time
from typing import TYPE_CHECKING

from kascade.gateway import ledger

if TYPE_CHECKING:
    from kascade.gateway.route import pipeline

ROLLING_SPAN_S = 86_400
CIRCUIT_STATES = {"closed": 0, "half-open": 1, "open": 2}


def window_end(*, window: str, window_start: float, now: float) -> float:
    """When the window that started at ``window_start`` resets. A rolling window never
    resets as a whole; its horizon is a full window from now."""
    if window == "calendar-day":
        return window_start + 86_400
    if window == "calendar-month":
        t = time.gmtime(window_start)
        year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
        return float(calendar.timegm((year, month, 1, 0, 0, 0)))
    return now + ROLLING_SPAN_S


async def refresh(state: pipeline.State) -> None:
    """Sets the budget, circuit and ledger gauges from the live state."""
    m = state.metrics
    reachable = True
    now = time.time()
    for name, expert in state.experts.items():
        if name not in state.runtime.config.experts:
            continue
        m.circuit_state.labels(name).set(CIRCUIT_STATES[expert.breaker.state])
        try:
            snap = await state.escalator.ledger.snapshot(expert=name, budget=expert.budget)
        except ledger.LedgerError:
            reachable = False
            continue
        m.budget_remaining.labels(name).set(float(ledger.nanos_to_usd(snap.remaining_nanos)))
        m.budget_limit.labels(name).set(float(ledger.nanos_to_usd(snap.limit_nanos)))
        m.budget_spent.labels(name).set(float(ledger.nanos_to_usd(snap.spent_nanos)))
        m.budget_reserved.labels(name).set(float(ledger.nanos_to_usd(snap.reserved_nanos)))
        m.budget_window_end.labels(name).set(
            window_end(window=snap.window, window_start=snap.window_start, now=now)
        )
    m.ledger_up.set(1 if reachable else 0)
