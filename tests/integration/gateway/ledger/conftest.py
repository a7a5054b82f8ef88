"""Fixtures for the ledger and throttle behaviour suites: both backends, a fake clock."""

from __future__ import annotations

import calendar
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kascade.gateway import ledger

# Every behaviour test runs once per backend; the Redis run needs a real redis-server.
BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]

# 2026-11-27 12:00:00 UTC
START = float(calendar.timegm((2026, 11, 27, 12, 0, 0)))


class FakeClock:
    """A clock the test moves by hand, so windows roll over without sleeping."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """The Redis URL for the Redis backend (starting redis-server only then), else None."""
    if backend == "redis":
        return str(request.getfixturevalue("redis_url"))
    return None


@pytest.fixture
async def make_ledger(
    backend_url: str | None, clock: FakeClock
) -> AsyncIterator[Callable[..., ledger.Ledger]]:
    """Builds ledgers of the parametrized backend on the fake clock; closes them after."""
    made: list[ledger.Ledger] = []

    def make(**kwargs: Any) -> ledger.Ledger:
        kwargs.setdefault("clock", clock)
        built: ledger.Ledger
        if backend_url is None:
            built = ledger.MemoryLedger(**kwargs)
        else:
            built = ledger.RedisLedger(url=backend_url, **kwargs)
        made.append(built)
        return built

    yield make
    for built in made:
        await built.close()


@pytest.fixture
async def make_throttle(
    backend_url: str | None, clock: FakeClock
) -> AsyncIterator[Callable[..., ledger.Throttle]]:
    """Builds throttles of the parametrized backend on the fake clock; closes them after."""
    made: list[ledger.Throttle] = []

    def make(**kwargs: Any) -> ledger.Throttle:
        kwargs.setdefault("clock", clock)
        built: ledger.Throttle
        if backend_url is None:
            built = ledger.MemoryThrottle(**kwargs)
        else:
            built = ledger.RedisThrottle(url=backend_url, **kwargs)
        made.append(built)
        return built

    yield make
    for built in made:
        await built.close()


@pytest.fixture
def replicas(
    backend: str, make_throttle: Callable[..., ledger.Throttle]
) -> tuple[ledger.Throttle, ledger.Throttle]:
    """Two gateway replicas' throttles: separate Redis clients, or one memory throttle."""
    first = make_throttle()
    return first, (make_throttle() if backend == "redis" else first)
