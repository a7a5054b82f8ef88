"""A failing reconcile: reported, retried with exponential backoff, one traceback only."""

from __future__ import annotations

import logging

import pytest

from kascade.controller import failures
from kascade.controller import kube as kube_mod


class _Script:
    """A reconcile that fails with the given errors, in order, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.reports: list[tuple[str, int, float]] = []

    async def run(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)

    async def report(self, error: Exception, count: int, retry_in: float) -> None:
        self.reports.append((str(error), count, retry_in))


async def test_a_failing_reconcile_is_reported_and_retried_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    coalescer = failures.Coalescer(sleep=sleep)
    script = _Script(RuntimeError("boom"), RuntimeError("boom"), RuntimeError("still"))
    with caplog.at_level(logging.WARNING, logger="kascade.operator"):
        coalescer.trigger("namespace/a", script.run, script.report)
        await coalescer.drained()
    assert script.calls == 4
    assert slept == [1.0, 2.0, 4.0]
    assert script.reports == [("boom", 1, 1.0), ("boom", 2, 2.0), ("still", 3, 4.0)]
    assert coalescer.failures("namespace/a") == 0
    # The traceback is logged once per streak; retries are one line each.
    assert sum(1 for r in caplog.records if r.exc_info) == 1
    assert sum(1 for r in caplog.records if "still failing" in r.getMessage()) == 2


def test_backoff_doubles_up_to_five_minutes() -> None:
    assert [failures.backoff(n) for n in (1, 2, 3, 9, 10, 50)] == [
        1.0,
        2.0,
        4.0,
        256.0,
        300.0,
        300.0,
    ]


async def test_an_object_gone_from_the_api_server_is_not_retried() -> None:
    async def sleep(seconds: float) -> None:
        raise AssertionError(f"no retry expected, slept {seconds}")

    coalescer = failures.Coalescer(sleep=sleep)
    script = _Script(kube_mod.KubeError("404 Not Found: gone", status=404))
    coalescer.trigger("pool/ns/p", script.run, script.report)
    await coalescer.drained()
    assert script.calls == 1
    assert script.reports == [("404 Not Found: gone", 1, 1.0)]


async def test_a_report_that_fails_does_not_stop_the_retries() -> None:
    async def sleep(seconds: float) -> None:
        return None

    async def broken_report(error: Exception, count: int, retry_in: float) -> None:
        raise kube_mod.KubeError("API server down", status=0)

    coalescer = failures.Coalescer(sleep=sleep)
    script = _Script(RuntimeError("x"))
    coalescer.trigger("expert/ns/e", script.run, broken_report)
    await coalescer.drained()
    assert script.calls == 2
