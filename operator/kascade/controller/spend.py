"""Mirroring an expert's spend from its namespace's gateway into ``CloudExpert.status``.

The gateway's ``GET /v1/kascade/status`` is the source of truth (its ledger); the
operator only copies it, so ``kubectl get cx`` shows spent/limit. Reads are cached per
namespace for a few seconds: one answer serves every expert of the namespace.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

log = logging.getLogger("kascade.operator.spend")

# Where the operator reaches a namespace's gateway status. In a cluster that is the
# gateway's admin Service (not the callers' Service); an operator run outside the
# cluster (development) can point elsewhere.
DEFAULT_URL_TEMPLATE = "http://kascade-gateway-admin.{namespace}.svc:9090"


def _rfc3339(epoch: float) -> str:
    stamp = datetime.fromtimestamp(epoch, UTC).replace(microsecond=0).isoformat()
    return stamp.replace("+00:00", "Z")


class GatewayStatusReader:
    """Reads (and briefly caches) each namespace's gateway status document."""

    def __init__(self, *, url_template: str = DEFAULT_URL_TEMPLATE, ttl_s: float = 5.0) -> None:
        self._template = url_template
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def read(self, namespace: str) -> dict[str, Any] | None:
        """The status document, or None when the gateway cannot be reached."""
        now = time.monotonic()
        cached = self._cache.get(namespace)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        url = self._template.format(namespace=namespace).rstrip("/") + "/v1/kascade/status"
        document: dict[str, Any] | None = None
        try:
            async with self._session.get(url) as reply:
                if reply.status == 200:
                    document = await reply.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("Gateway status unreachable namespace=%s: %s", namespace, exc)
        self._cache[namespace] = (now, document)
        return document

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def expert_status(
    document: dict[str, Any] | None, *, expert: str, previous: dict[str, Any] | None
) -> dict[str, Any]:
    """``spend`` and ``circuit`` for an expert's status from a gateway status document.

    ``updatedAt`` only moves when a figure changed, so an idle expert's status stays
    byte-identical and is not rewritten.
    """
    entry = ((document or {}).get("experts") or {}).get(expert)
    if not entry or "budget" not in entry:
        return {}
    budget = entry["budget"]
    spend = {
        "windowStart": _rfc3339(float(budget["windowStart"])),
        "spentUSD": float(budget["spentUSD"]),
        "reservedUSD": float(budget["reservedUSD"]),
        "remainingUSD": float(budget["remainingUSD"]),
    }
    old = dict((previous or {}).get("spend") or {})
    old_updated = old.pop("updatedAt", None)
    spend["updatedAt"] = old_updated if old == spend and old_updated else _rfc3339(time.time())
    circuit = entry.get("circuit") or {}
    return {
        "spend": spend,
        "circuit": {
            "state": circuit.get("state", "closed"),
            "recentFailures": int(circuit.get("consecutiveFailures", 0)),
        },
    }


# Traffic figures change with every request; writing them more often than this would
# turn a busy gateway into a stream of status writes (and watch events).
STATS_MIN_INTERVAL_S = 30.0


def policy_stats(document: dict[str, Any] | None, *, policy: str) -> dict[str, Any] | None:
    """``RoutingPolicy.status.stats`` from a gateway status document (None: no figures)."""
    entry = (((document or {}).get("policies") or {}).get(policy) or {}).get("stats")
    if not entry:
        return None
    requests = int(entry.get("requests", 0))
    share = 1.0 / requests if requests else 0.0
    return {
        "requests": requests,
        "escalationRate": round(int(entry.get("escalated", 0)) * share, 4),
        "cacheHitRate": round(int(entry.get("cacheHits", 0)) * share, 4),
        "costUSD": int(entry.get("costNanos", 0)) / 1e9,
        "since": _rfc3339(float(entry["since"])),
    }


class StatsThrottle:
    """At most one stats write per policy per ``STATS_MIN_INTERVAL_S`` (injectable clock)."""

    def __init__(self, *, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._written: dict[str, float] = {}

    def choose(
        self, key: str, *, fresh: dict[str, Any] | None, stored: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The stats to keep in status: the fresh figures when they differ and a write is
        due, else what is stored (so an unchanged status is not rewritten)."""
        if fresh is None or fresh == stored:
            return stored
        now = self._clock()
        last = self._written.get(key)
        if stored is not None and last is not None and now - last < STATS_MIN_INTERVAL_S:
            return stored
        self._written[key] = now
        return fresh
