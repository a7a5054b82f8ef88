"""Per-policy traffic figures for the status document (``RoutingPolicy.status.stats``).

Counted in the record step, per policy and since the policy's current generation was
first served: requests, how many an expert answered, how many the cache answered, and
the expert cost they caused. The operator copies them into the policy's status.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Tally:
    generation: int | None
    since: float
    requests: int = 0
    escalated: int = 0
    cache_hits: int = 0
    cost_nanos: int = 0

    def document(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "since": self.since,
            "requests": self.requests,
            "escalated": self.escalated,
            "cacheHits": self.cache_hits,
            "costNanos": self.cost_nanos,
        }


class PolicyStats:
    """The figures of every policy this process served (reset when its generation moves)."""

    def __init__(self, *, clock: Any = time.time) -> None:
        self._clock = clock
        self._tallies: dict[str, Tally] = {}

    def observe(
        self, *, policy: str, generation: int | None, route: str, cache: str, cost_nanos: int
    ) -> None:
        tally = self._tallies.get(policy)
        if tally is None or tally.generation != generation:
            tally = self._tallies[policy] = Tally(generation=generation, since=self._clock())
        tally.requests += 1
        if route.startswith("expert:"):
            tally.escalated += 1
        if cache in ("exact", "semantic"):
            tally.cache_hits += 1
        tally.cost_nanos += max(cost_nanos, 0)

    def document(self, policy: str) -> dict[str, Any] | None:
        tally = self._tallies.get(policy)
        return None if tally is None else tally.document()
