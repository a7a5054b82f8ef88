"""Reconcile runs, one at a time per key, and what happens when one fails.

A failed reconcile becomes a ``Ready=False`` condition (reason ``ReconcileFailed``) and a
Warning Event on the objects it was for, and is retried with exponential backoff. The
log gets the traceback once per failure streak, then one line per retry: an error that
persists never turns into a loop of tracebacks, and the retry load stays bounded.

kopf's own retries (``TemporaryError``) apply to change-detecting handlers; the operator
uses only event watchers and timers (no progress annotations on users' objects), so the
backoff lives here, around the coalesced runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import prometheus_client

from kascade.controller import conditions as cond
from kascade.controller import events, status
from kascade.controller import kube as kube_mod

log = logging.getLogger("kascade.operator")

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 300.0

RECONCILES = prometheus_client.Counter(
    "kascade_operator_reconciles_total",
    "Reconciles run by the operator, by kind and result.",
    ["kind", "result"],
)

Run = Callable[[], Awaitable[None]]
Report = Callable[[Exception, int, float], Awaitable[None]]
"""Called with the error, the number of failures in a row and the seconds to the retry."""


def backoff(failures: int) -> float:
    """Seconds before the next try after ``failures`` failures in a row: 1, 2, 4 … 300."""
    return float(min(BACKOFF_BASE_SECONDS * 2 ** max(failures - 1, 0), BACKOFF_MAX_SECONDS))


@dataclass
class _Key:
    run: Run | None = None
    report: Report | None = None
    failures: int = 0
    retry_in: float = 0.0


@dataclass
class Coalescer:
    """Runs at most one reconcile per key at a time; events during a run cause one rerun,
    with the newest event's work (so a rerun never acts on an older snapshot). A failed
    run is reported and retried after :func:`backoff`, unless a newer run replaces it."""

    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _keys: dict[str, _Key] = field(default_factory=dict)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def trigger(self, key: str, run: Run, report: Report | None = None) -> None:
        state = self._keys.setdefault(key, _Key())
        state.run, state.report = run, report
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(self._loop(key))

    def failures(self, key: str) -> int:
        """Failures in a row of ``key`` (0 after a success)."""
        state = self._keys.get(key)
        return state.failures if state is not None else 0

    async def drained(self) -> None:
        """Waits until no key has work left (retries included)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()))

    async def _loop(self, key: str) -> None:
        kind = key.split("/", 1)[0]
        state = self._keys[key]
        try:
            while state.run is not None:
                if state.failures:
                    await self.sleep(state.retry_in)
                run, report = state.run, state.report
                state.run = None
                try:
                    await run()
                except Exception as error:  # every failure is reported and retried
                    RECONCILES.labels(kind=kind, result="error").inc()
                    state.failures += 1
                    state.retry_in = backoff(state.failures)
                    _log_failure(key, error, failures=state.failures, retry_in=state.retry_in)
                    # A 404 means the object is gone: its next event, if any, starts over.
                    gone = isinstance(error, kube_mod.KubeError) and error.status == 404
                    if state.run is None and not gone:
                        state.run, state.report = run, report
                    if report is not None:
                        await _report_safely(report, error, state)
                else:
                    RECONCILES.labels(kind=kind, result="ok").inc()
                    state.failures = 0
        finally:
            self._tasks.pop(key, None)


def _log_failure(key: str, error: Exception, *, failures: int, retry_in: float) -> None:
    if failures == 1:
        log.error("Reconcile failed key=%s; retrying in %.0fs", key, retry_in, exc_info=error)
    else:
        log.warning(
            "Reconcile still failing key=%s failures=%d; retrying in %.0fs: %s",
            key,
            failures,
            retry_in,
            error,
        )


async def _report_safely(report: Report, error: Exception, state: _Key) -> None:
    try:
        await report(error, state.failures, state.retry_in)
    except Exception as report_error:  # the API server may be what is failing
        log.warning("Could not report a reconcile failure: %s", report_error)


async def report_failure(
    kube: kube_mod.Kube,
    bodies: Sequence[dict[str, Any]],
    error: Exception,
    *,
    failures: int,
    retry_in: float,
) -> None:
    """Ready=False with reason ReconcileFailed on each object, and a Warning Event for the
    first failure of a streak."""
    message = f"Reconcile failed ({failures} in a row, next try in {retry_in:.0f}s): {error}"
    for body in bodies:
        generation = body.get("metadata", {}).get("generation")
        conds = cond.set_condition(
            list((body.get("status") or {}).get("conditions") or []),
            type_=cond.ConditionType.READY,
            status=False,
            reason=cond.Reason.RECONCILE_FAILED,
            message=message[:32768],
            generation=generation,
        )
        await status.write(kube, body, {"conditions": conds})
        if failures == 1:
            await post_event(kube, body, reason=str(cond.Reason.RECONCILE_FAILED), message=message)


async def post_event(
    kube: kube_mod.Kube,
    body: dict[str, Any],
    *,
    reason: str,
    message: str,
    type_: str = "Warning",
) -> None:
    """Records an Event on ``body``; a failure to record it is logged, never raised."""
    await events.record(kube, body, reason=reason, message=message, type_=type_)
