"""The gateway's memory of local answers that user feedback may label.

A policy whose ``confidence.target.feedbackLabels`` is true lets a user's rating
(``POST /v1/kascade/feedback``) label a scored local answer it returned. A rating
arrives after the response, so what a label needs is remembered per request id
(``Kept``): the arm and its target, the task, the score, the feature vector (an arm
that fits its score), and who asked. Each request is labelled at most once (``claim``:
the first of an expert's label and a user's rating), so a caller cannot add more labels
than the local answers it was given.

Two stores keep the same promise (``KeptStore``): ``KeptAnswers`` here, in process, for
one replica; ``kept_answers_shared.SharedKeptAnswers`` in Redis when the gateway's
ledger is Redis, so a rating labels the answer whichever replica it reaches, and the
once-only claim holds across replicas.

The in-process memory is bounded: the last ``capacity`` request ids (least recently
added go first) and no older than ``max_age_s`` (a rating an hour late says little
about the traffic the window holds). 10,000 entries cost about 2.6 MB per replica,
about 12 MB with a combined score's feature vectors (19 floats each; tracemalloc).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kascade.gateway import config as config_mod
from kascade.gateway.tenants import access, keys

__all__ = [
    "CAPACITY",
    "MAX_AGE_S",
    "Kept",
    "KeptAnswers",
    "KeptStore",
    "StoreUnavailable",
    "arm_identity",
    "caller_identity",
    "rating_label",
]

CAPACITY = 10_000
MAX_AGE_S = 3600.0

_RIGHT = {"positive": True, "negative": False}


class StoreUnavailable(Exception):
    """The shared store could not be read or written (Redis down or slow)."""


def rating_label(label: str) -> bool | None:
    """A rating's label: positive (up, 4-5) right, negative (down, 1-2) wrong, neutral
    (3) none: a shrug says nothing about the answer."""
    return _RIGHT.get(label)


def caller_identity(caller: access.Caller, key: str | None) -> str:
    """Who asked, as far as 'same caller' needs: the tenant (its keys are one team), a
    digest prefix of a key without a tenant (never the key), or anonymous."""
    if caller.tenant is not None:
        return "tenant:" + caller.tenant.name
    if caller.authenticated and key is not None:
        return "key:" + keys.digest(key)[:8].hex()
    return access.ANONYMOUS


def arm_identity(target: config_mod.TargetConfig, *, fits: bool) -> str:
    """What a remembered answer's arm must still be for a rating to label it: the same
    target and the same scoring (fitted or not). A digest, equal in every replica that
    runs the same config; a changed target drops what was kept for the old one."""
    text = json.dumps([target.model_dump(mode="json"), fits], sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class Kept:
    """What a label of one returned local answer needs."""

    policy: str
    variant: str | None
    arm: str
    """``arm_identity`` of the arm that answered."""
    task: str | None
    score: float
    values: Mapping[str, float] | None
    caller: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self) | {"values": self.values})

    @classmethod
    def from_json(cls, raw: str | bytes) -> Kept | None:
        """The record, or None for anything that is not one (never raises)."""
        try:
            data: Any = json.loads(raw)
            kept = cls(**data)
        except (ValueError, TypeError):
            return None
        return kept if isinstance(kept.score, float | int) else None


class KeptStore(Protocol):
    """Where kept answers wait for a rating (see the module)."""

    async def remember(self, request_id: str, kept: Kept) -> None:
        """Keeps one answer (best effort: a lost one only reads as unknown later)."""

    async def find(self, request_id: str) -> Kept | None:
        """The answer, or None when unknown or too old; raises ``StoreUnavailable``."""

    async def claim(self, request_id: str) -> bool:
        """Whether a label of ``request_id`` may be added: False when one already was
        (whichever came first); marks it labelled. Raises ``StoreUnavailable``."""

    async def close(self) -> None: ...


@dataclasses.dataclass(slots=True)
class _Entry:
    kept: Kept
    at: float
    labelled: bool = False


class KeptAnswers:
    """In process: the last ``capacity`` kept answers, each for ``max_age_s``."""

    def __init__(
        self,
        *,
        capacity: int = CAPACITY,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.max_age_s = max_age_s
        self.clock = clock
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def remember(self, request_id: str, kept: Kept) -> None:
        """Keeps one answer; the oldest goes when the memory is full."""
        self._entries[request_id] = _Entry(kept=kept, at=self.clock())
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    async def find(self, request_id: str) -> Kept | None:
        """The answer, or None when unknown or older than the age limit (then dropped,
        with every older one: entries are in the order they were added)."""
        entry = self._entry(request_id)
        return entry.kept if entry is not None else None

    async def claim(self, request_id: str) -> bool:
        """True unless the answer is remembered and already labelled; marks it labelled
        (an answer not remembered cannot be rated, so its expert label always counts)."""
        entry = self._entry(request_id)
        if entry is None:
            return True
        if entry.labelled:
            return False
        entry.labelled = True
        return True

    async def close(self) -> None:
        self._entries.clear()

    def _entry(self, request_id: str) -> _Entry | None:
        oldest = self.clock() - self.max_age_s
        while self._entries:
            first = next(iter(self._entries.values()))
            if first.at >= oldest:
                break
            self._entries.popitem(last=False)
        return self._entries.get(request_id)
