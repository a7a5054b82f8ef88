"""The Redis backends fail closed fast, reload their scripts, and keep spend durable."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis

from kascade.gateway import ledger
from kascade.gateway.ledger import _redis_conn

pytestmark = pytest.mark.redis

BUDGET = ledger.Budget(limit_nanos=1_000, window="calendar-day")
LIMITS = ledger.ThrottleLimits(requests_per_minute=10, tokens_per_minute=None, max_concurrency=1)
HELD = ledger.Reservation(
    id="r/1", expert="e", amount_nanos=1, window_key="day:2026-11-27", created_at=0.0
)
PERMIT = ledger.Permit(id="p", expert="e", tokens=1, acquired_at=0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def closed_port_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def silent_server_url() -> Iterator[str]:
    """A port that accepts TCP connections (kernel backlog) but never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"redis://127.0.0.1:{s.getsockname()[1]}/0"


OPERATIONS = ["reserve", "settle", "release", "snapshot", "acquire", "unpermit", "block", "state"]


def operation(
    name: str, books: ledger.Ledger, throttle: ledger.Throttle
) -> Callable[[], Awaitable[object]]:
    return {
        "reserve": lambda: books.reserve(expert="e", budget=BUDGET, amount_nanos=1, request_id="r"),
        "settle": lambda: books.settle(HELD, actual_nanos=1),
        "release": lambda: books.release(HELD),
        "snapshot": lambda: books.snapshot(expert="e", budget=BUDGET),
        "acquire": lambda: throttle.acquire(expert="e", limits=LIMITS, tokens=1),
        "unpermit": lambda: throttle.release(PERMIT),
        "block": lambda: throttle.block_until(expert="e", until=1.0),
        "state": lambda: throttle.state(expert="e"),
    }[name]


class FrozenMonotonic:
    """Stands in for the ``time`` module of the Redis connection: a monotonic clock that
    moves only when the test says so, so "right after a failure" is exact."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


# Only ends a hang (a missing client timeout) with a clear failure; the bound itself is
# checked on the client's configuration and on which timeout ended the call.
HANG_DEADLINE_S = 30.0


async def fails_closed(call: Callable[[], Awaitable[object]], name: str) -> str:
    """Runs ``call``, which must raise ``LedgerUnavailable``; returns its message."""
    try:
        async with asyncio.timeout(HANG_DEADLINE_S):
            with pytest.raises(ledger.LedgerUnavailable) as failed:
                await call()
    except TimeoutError:
        pytest.fail(f"{name} hung on an unreachable Redis instead of failing closed")
    return str(failed.value)


@pytest.mark.parametrize(
    ("url_fixture", "cut_off_by"),
    [
        # Refused at once by the kernel.
        ("closed_port_url", "(ConnectionError:"),
        # Accepted but never answered: only the client's own timeout ends the call.
        ("silent_server_url", "(TimeoutError:"),
    ],
)
async def test_unreachable_redis_fails_closed_on_the_clients_own_timeout_then_fast(
    url_fixture: str,
    cut_off_by: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The documented bound (docs/ledger.md: "< 2 s, then fail-fast") is the client's
    # configuration: a socket timeout under a cap for the whole call.
    assert _redis_conn.SOCKET_TIMEOUT_S <= _redis_conn.CALL_TIMEOUT_S < 2.0
    clock = FrozenMonotonic()
    monkeypatch.setattr(_redis_conn, "time", clock)
    url = str(request.getfixturevalue(url_fixture))
    for name in OPERATIONS:
        # Fresh clients each time, so every operation really goes to the network.
        books, throttle = ledger.open_backends(url=url, checkpoint_path=None)
        call = operation(name, books, throttle)
        try:
            first = await fails_closed(call, name)
            assert "unavailable" in first, (name, first)
            assert cut_off_by in first, (name, first)
            # Right after a failure, calls fail at once instead of going to the network
            # (and waiting for a timeout) again.
            held = await fails_closed(call, name)
            assert "retrying shortly" in held, (name, held)
            # Once the hold is over, the next call tries Redis again.
            clock.now += _redis_conn.DOWN_HOLD_S
            retried = await fails_closed(call, name)
            assert "retrying shortly" not in retried, (name, retried)
            assert cut_off_by in retried, (name, retried)
        finally:
            await books.close()
            await throttle.close()


async def test_password_never_appears_in_errors(closed_port_url: str) -> None:
    url = closed_port_url.replace("redis://", "redis://user:s3cret-pw@")
    books = ledger.RedisLedger(url=url)
    try:
        with pytest.raises(ledger.LedgerUnavailable) as failed:
            await books.snapshot(expert="e", budget=BUDGET)
        assert "s3cret-pw" not in str(failed.value)
    finally:
        await books.close()
    with pytest.raises(ValueError, match="not supported") as refused:
        ledger.open_backends(url="http://user:s3cret-pw@host/", checkpoint_path=None)
    assert "s3cret-pw" not in str(refused.value)


async def test_scripts_are_reloaded_after_script_flush(redis_url: str) -> None:
    books = ledger.RedisLedger(url=redis_url)
    throttle = ledger.RedisThrottle(url=redis_url)
    try:
        held = await books.reserve(expert="e", budget=BUDGET, amount_nanos=10, request_id="a")
        await throttle.acquire(expert="e", limits=LIMITS, tokens=1)
        raw = redis.Redis.from_url(redis_url)
        raw.script_flush()
        raw.close()
        await books.settle(held, actual_nanos=5)
        assert (await books.snapshot(expert="e", budget=BUDGET)).spent_nanos == 5
        assert (await throttle.state(expert="e")).requests_last_minute == 1
    finally:
        await books.close()
        await throttle.close()


async def test_spend_and_reservations_are_shared_by_clients(redis_url: str) -> None:
    first = ledger.RedisLedger(url=redis_url)
    held = await first.reserve(expert="e", budget=BUDGET, amount_nanos=600, request_id="a")
    await first.close()
    second = ledger.RedisLedger(url=redis_url)
    other_prefix = ledger.RedisLedger(url=redis_url, key_prefix="other:")
    try:
        # Another replica (a new client) sees the reservation and may settle it.
        with pytest.raises(ledger.BudgetExhausted):
            await second.reserve(expert="e", budget=BUDGET, amount_nanos=401, request_id="b")
        await second.settle(held, actual_nanos=250)
        await second.settle(held, actual_nanos=250)
        snap = await second.snapshot(expert="e", budget=BUDGET)
        assert (snap.spent_nanos, snap.reserved_nanos) == (250, 0)
        assert (await other_prefix.snapshot(expert="e", budget=BUDGET)).spent_nanos == 0
    finally:
        await second.close()
        await other_prefix.close()


async def test_spend_survives_a_redis_restart(tmp_path: Path) -> None:
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed"
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    cmd += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                if redis.Redis(port=port).ping():
                    return proc
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    url = f"redis://127.0.0.1:{port}/0"
    proc = start()
    books = ledger.RedisLedger(url=url)
    try:
        held = await books.reserve(expert="e", budget=BUDGET, amount_nanos=700, request_id="a")
        await books.settle(held, actual_nanos=700)
        proc.kill()  # no clean shutdown: only the append-only file survives
        proc.wait()
        with pytest.raises(ledger.LedgerUnavailable):
            await books.snapshot(expert="e", budget=BUDGET)
        proc = start()
        # The same client reconnects (once its fail-fast hold after the last failure is
        # over), and the spend is still there.
        deadline = time.monotonic() + 60
        while True:
            try:
                snap = await books.snapshot(expert="e", budget=BUDGET)
            except ledger.LedgerUnavailable:
                assert time.monotonic() < deadline, "the client never reconnected"
                await asyncio.sleep(0.05)
            else:
                break
        assert snap.spent_nanos == 700
        with pytest.raises(ledger.BudgetExhausted):
            await books.reserve(expert="e", budget=BUDGET, amount_nanos=301, request_id="b")
    finally:
        await books.close()
        proc.kill()
        proc.wait()


async def test_every_key_expires_and_rolling_state_is_per_minute(redis_url: str) -> None:
    books = ledger.RedisLedger(url=redis_url)
    throttle = ledger.RedisThrottle(url=redis_url)
    try:
        windows: tuple[ledger.Window, ...] = ("rolling-24h", "calendar-day", "calendar-month")
        for window in windows:
            budget = ledger.Budget(limit_nanos=10**12, window=window)
            for i in range(200):
                held = await books.reserve(
                    expert="e", budget=budget, amount_nanos=10, request_id=f"{i}"
                )
                await books.settle(held, actual_nanos=5)
        permit = await throttle.acquire(expert="e", limits=LIMITS, tokens=1)
        await throttle.release(permit)
        await throttle.block_until(expert="e", until=time.time() + 30)
    finally:
        await books.close()
        await throttle.close()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = sorted(client.scan_iter("kascade:*"))
        assert "kascade:ledger:{e}:roll:buckets" in keys
        # Outstanding-reservation keys vanish when empty; everything else carries a TTL.
        assert not [k for k in keys if k.endswith((":held", ":expiry", ":reserved"))]
        assert {k: client.ttl(k) for k in keys if client.ttl(k) <= 0} == {}
        # 200 settles in one minute: one bucket, not one entry per request.
        assert client.hlen("kascade:ledger:{e}:roll:buckets") <= 2
        assert client.zcard("kascade:ledger:{e}:roll:idx") <= 2
    finally:
        client.close()
