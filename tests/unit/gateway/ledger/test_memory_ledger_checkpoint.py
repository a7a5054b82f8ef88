"""The in-memory ledger's checkpoint: a restart loses no spend, a bad file stops it."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from kascade.gateway import ledger

BUDGET = ledger.Budget(limit_nanos=10_000, window="rolling-24h")
MONTH = ledger.Budget(limit_nanos=10_000, window="calendar-month")


async def test_settled_spend_survives_recreation_after_close(tmp_path: Path) -> None:
    path = tmp_path / "ledger" / "spend.json"
    books = ledger.MemoryLedger(checkpoint_path=path)
    for budget in (BUDGET, MONTH):
        held = await books.reserve(expert="e", budget=budget, amount_nanos=900, request_id="a")
        await books.settle(held, actual_nanos=750)
    await books.close()
    with pytest.raises(ledger.LedgerUnavailable):
        await books.snapshot(expert="e", budget=BUDGET)

    again = ledger.MemoryLedger(checkpoint_path=path)
    for budget in (BUDGET, MONTH):
        snap = await again.snapshot(expert="e", budget=budget)
        assert (snap.spent_nanos, snap.reserved_nanos) == (750, 0)
    await again.close()


def _holds(path: Path, *, spent: int) -> bool:
    """The checkpoint file (replaced atomically) records ``spent`` and no reservation."""
    try:
        books = json.loads(path.read_bytes())["experts"]["e"]
    except (FileNotFoundError, KeyError):
        return False
    return sum(books["calendar"].values()) == spent and books["held"] == []


async def test_checkpoint_follows_changes_without_close(tmp_path: Path) -> None:
    path = tmp_path / "spend.json"
    books = ledger.MemoryLedger(checkpoint_path=path, checkpoint_interval_s=0.05)
    for i in range(20):
        held = await books.reserve(expert="e", budget=MONTH, amount_nanos=100, request_id=f"{i}")
        await books.settle(held, actual_nanos=10)
    # No close(): as if the process were killed once the background writer caught up
    # with the last change (all 20 settled at 10 each, nothing held).
    deadline = time.monotonic() + 10
    while not _holds(path, spent=200):
        assert time.monotonic() < deadline, "the checkpoint never caught up"
        await asyncio.sleep(0.01)
    again = ledger.MemoryLedger(checkpoint_path=path)
    assert (await again.snapshot(expert="e", budget=MONTH)).spent_nanos == 200
    leftovers = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert not leftovers, "temporary files must not be left behind"
    await books.close()
    await again.close()


async def test_reservations_of_a_dead_process_become_worst_case_spend(tmp_path: Path) -> None:
    path = tmp_path / "spend.json"
    books = ledger.MemoryLedger(checkpoint_path=path)
    await books.reserve(expert="e", budget=MONTH, amount_nanos=600, request_id="in-flight")
    await books.close()
    again = ledger.MemoryLedger(checkpoint_path=path)
    snap = await again.snapshot(expert="e", budget=MONTH)
    assert (snap.spent_nanos, snap.reserved_nanos) == (600, 0)
    await again.close()


async def test_a_corrupt_checkpoint_stops_the_ledger_instead_of_forgetting_spend(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spend.json"
    path.write_text("{not json")
    with pytest.raises(ledger.LedgerError, match="not valid JSON"):
        ledger.MemoryLedger(checkpoint_path=path)
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(ledger.LedgerError, match="unknown format"):
        ledger.MemoryLedger(checkpoint_path=path)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="reservation_ttl_s"):
        ledger.MemoryLedger(reservation_ttl_s=0)
    with pytest.raises(ValueError, match="checkpoint_interval_s"):
        ledger.MemoryLedger(checkpoint_interval_s=5)
    with pytest.raises(ValueError, match="permit_ttl_s"):
        ledger.MemoryThrottle(permit_ttl_s=-1)


async def test_checkpoints_written_while_the_books_change_stay_consistent(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spend.json"
    books = ledger.MemoryLedger(checkpoint_path=path, checkpoint_interval_s=0)

    async def spend(expert: str) -> None:
        for i in range(40):
            budget = ledger.Budget(limit_nanos=10**9, window="calendar-day")
            held = await books.reserve(
                expert=expert, budget=budget, amount_nanos=9, request_id=f"{i}"
            )
            await asyncio.sleep(0)  # let the writer thread run while books change
            await books.settle(held, actual_nanos=3)

    # New experts and keys appear while the writer thread is busy with earlier states.
    await asyncio.gather(*(spend(f"expert-{n}") for n in range(50)))
    await books.close()
    again = ledger.MemoryLedger(checkpoint_path=path)
    for n in range(50):
        budget = ledger.Budget(limit_nanos=10**9, window="calendar-day")
        assert (await again.snapshot(expert=f"expert-{n}", budget=budget)).spent_nanos == 120
    await again.close()
