"""The gateway's memory of local answers that user feedback may label.

A policy whose ``confidence.target.feedbackLabels`` is true lets a user's rating
(``POST /v1/kascade/feedback``) label a scored local answer it returned. A rating
arrives after the response, so what a label needs is remembered per request id: the
arm, the task, the score, the feature vector (an arm that fits its score), who asked,
and whether the request already has a label. Each request is labelled at most once
(the first of an expert's label and a user's rating), so a caller cannot add more
labels than the local answers it was given.

The memory is bounded: the last ``capacity`` request ids (least recently added go
first) and no older than ``max_age_s`` (a rating an hour late says little about the
traffic the window holds). 10,000 entries cost about 2.6 MB per replica, about
12 MB with a combined score's feature vectors (19 floats each; tracemalloc).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from kascade.gateway.tenants import access, keys

if TYPE_CHECKING:
    from kascade.gateway.route import shadow

__all__ = ["CAPACITY", "MAX_AGE_S", "Kept", "KeptAnswers", "caller_identity", "rating_label"]

CAPACITY = 10_000
MAX_AGE_S = 3600.0

_RIGHT = {"positive": True, "negative": False}


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


@dataclasses.dataclass(slots=True)
class Kept:
    """What a label of one returned local answer needs."""

    quality: shadow.PolicyQuality
    task: str | None
    score: float
    values: Mapping[str, float] | None
    caller: str
    at: float
    labelled: bool = False


class KeptAnswers:
    """The last ``capacity`` kept answers, each for ``max_age_s`` (see the module)."""

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
        self._entries: collections.OrderedDict[str, Kept] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(
        self,
        request_id: str,
        *,
        quality: shadow.PolicyQuality,
        task: str | None,
        score: float,
        values: Mapping[str, float] | None,
        caller: str,
    ) -> None:
        """Keeps one answer; the oldest goes when the memory is full."""
        self._entries[request_id] = Kept(
            quality=quality, task=task, score=score, values=values, caller=caller, at=self.clock()
        )
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def find(self, request_id: str) -> Kept | None:
        """The answer, or None when unknown or older than the age limit (then dropped,
        with every older one: entries are in the order they were added)."""
        self._expire()
        return self._entries.get(request_id)

    def claim(self, request_id: str) -> bool:
        """Whether an expert's label of ``request_id`` may be added: True unless the
        answer is remembered and already labelled (by a rating); marks it labelled."""
        found = self.find(request_id)
        if found is None:
            return True
        if found.labelled:
            return False
        found.labelled = True
        return True

    def _expire(self) -> None:
        oldest = self.clock() - self.max_age_s
        while self._entries:
            first = next(iter(self._entries.values()))
            if first.at >= oldest:
                return
            self._entries.popitem(last=False)
