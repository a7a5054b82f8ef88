"""Holding one reservation in several in-memory books in one critical section.

The caller runs this without an ``await``, so no other task can observe the books
between the first hold and the last (or the undo of a partial hold).
"""

from __future__ import annotations

import dataclasses

from kascade.gateway.ledger import _books


@dataclasses.dataclass(frozen=True)
class Target:
    """One book to hold in: its name, state, window and limit."""

    name: str
    books: _books.Books
    window_key: str
    limit: int


@dataclasses.dataclass(frozen=True)
class Refusal:
    """The first book that could not hold the amount, and what it held before."""

    target: Target
    spent: int
    reserved: int


def hold_all(
    targets: list[Target], *, rid: str, amount: int, now: float, ttl: float
) -> Refusal | None:
    """Holds ``amount`` under ``rid`` in every target, or in none (returns the refusal)."""
    held: list[Target] = []
    for target in targets:
        ok, spent, reserved = target.books.try_reserve(
            rid=rid, window_key=target.window_key, limit=target.limit, amount=amount, now=now,
            ttl=ttl,
        )  # fmt: skip
        if not ok:
            for done in held:
                # Its expiry entry stays in the heap until a compaction; sweep skips ids
                # no longer held.
                done.books._unhold(rid)
            return Refusal(target=target, spent=spent, reserved=reserved)
        held.append(target)
    return None
