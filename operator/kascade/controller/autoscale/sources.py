"""Where a pool's window comes from: the gateway replicas' /metrics, or Prometheus.

Both sources answer ``await source.read()`` with a ``Reading`` for one pool; create one
source per pool timer (the scraping source keeps that pool's previous scrape).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from kascade.controller.autoscale import decision, metrics

Clock = Callable[[], float]
EndpointLister = Callable[[], Awaitable[Sequence[str]]]


@dataclass(frozen=True, kw_only=True)
class Reading:
    """One read of a pool's figures."""

    window: decision.Window | None
    """The window since the previous read; None on the first read or when all failed."""
    errors: tuple[str, ...] = ()
    """What failed, one line each (address or query and why); empty when all worked."""
    scraped: int = 0
    """Gateway replicas (or Prometheus queries) that answered."""


class MetricsSource(Protocol):
    """Anything that reads one pool's window."""

    async def read(self) -> Reading:
        """Read the pool's figures since the previous read."""
        ...


def scrape_addresses(
    *, endpoint_slices: Iterable[Mapping[str, Any]], port_name: str = "http"
) -> list[str]:
    """``host:port`` of every ready endpoint in EndpointSlices (API dicts, camelCase).

    Endpoints whose ``conditions.ready`` is false are skipped (unset counts as ready, as
    Kubernetes documents). IPv6 addresses are bracketed. Slices without a port named
    ``port_name`` contribute nothing. Raises ValueError on a malformed slice.
    """
    found: set[str] = set()
    for index, item in enumerate(endpoint_slices):
        if not isinstance(item, Mapping):
            raise ValueError(
                f"endpoint_slices[{index}] is {type(item).__name__}; "
                "accepted: an EndpointSlice as a dict"
            )
        ports = [p for p in item.get("ports") or [] if p.get("name") == port_name]
        if not ports or ports[0].get("port") is None:
            continue
        port = int(ports[0]["port"])
        ipv6 = item.get("addressType") == "IPv6"
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                host = f"[{address}]" if ipv6 else str(address)
                found.add(f"{host}:{port}")
    return sorted(found)


class GatewayScrapeSource:
    """Scrapes ``http://<address>/metrics`` of every gateway replica concurrently."""

    def __init__(
        self,
        *,
        pool: str,
        endpoints: EndpointLister,
        session: aiohttp.ClientSession,
        timeout_seconds: float = 2.0,
        clock: Clock = time.time,
    ) -> None:
        self._pool = pool
        self._endpoints = endpoints
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._timeout_seconds = timeout_seconds
        self._clock = clock
        self._tracker = metrics.CounterTracker()

    async def _scrape(self, address: str) -> dict[str, metrics.PoolCounters] | str:
        url = f"http://{address}/metrics"
        try:
            async with self._session.get(url, timeout=self._timeout) as response:
                if response.status != 200:
                    return f"{address}: HTTP {response.status} from /metrics"
                text = await response.text()
            return metrics.parse(text)
        except TimeoutError:
            return f"{address}: no answer within {self._timeout_seconds:g}s"
        except aiohttp.ClientError as error:
            return f"{address}: {type(error).__name__}: {error}"
        except ValueError as error:
            return f"{address}: {error}"

    async def read(self) -> Reading:
        """Scrape all replicas; failures are reported in ``errors``, the rest used."""
        addresses = list(await self._endpoints())
        at = self._clock()
        results = await asyncio.gather(*(self._scrape(a) for a in addresses))
        # One timestamp per round keeps the window lengths of all replicas equal.
        snapshots = {
            a: metrics.Snapshot(at=at, pools=r)
            for a, r in zip(addresses, results, strict=True)
            if not isinstance(r, str)
        }
        errors = tuple(r for r in results if isinstance(r, str))
        if not addresses:
            errors = ("no gateway endpoints to scrape",)
        window = self._tracker.advance(
            pool=self._pool, at=at, snapshots=snapshots, endpoints=addresses
        )
        return Reading(window=window, errors=errors, scraped=len(snapshots))


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class PrometheusSource:
    """Asks a Prometheus server (HTTP API ``/api/v1/query``) for the pool's window."""

    def __init__(
        self,
        *,
        pool: str,
        base_url: str,
        session: aiohttp.ClientSession,
        window_seconds: int = 120,
        timeout_seconds: float = 5.0,
    ) -> None:
        if window_seconds < 1:
            raise ValueError(f"window_seconds={window_seconds} (accepted: >= 1)")
        self._pool = pool
        self._url = base_url.rstrip("/") + "/api/v1/query"
        self._session = session
        self._window = window_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._timeout_seconds = timeout_seconds

    def queries(self) -> dict[str, str]:
        """The PromQL this source runs, by figure."""
        selector = f'{{pool="{_label_value(self._pool)}"}}'
        rng = f"[{self._window}s]"
        return {
            "requests": f"sum(increase({metrics.REQUESTS}{selector}{rng}))",
            "escalations": f"sum by (reason) (increase({metrics.ESCALATIONS}{selector}{rng}))",
            "cost": f"sum by (reason) (increase({metrics.ESCALATION_COST}{selector}{rng}))",
            "inflight": f"sum(avg_over_time({metrics.INFLIGHT}{selector}{rng}))",
        }

    async def _query(self, promql: str) -> dict[str, float] | str:
        """Instant vector as {reason or '': value}, or an error line."""
        try:
            async with self._session.get(
                self._url, params={"query": promql}, timeout=self._timeout
            ) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    return f"{promql}: HTTP {response.status}, not a Prometheus API answer"
        except TimeoutError:
            return f"{promql}: no answer within {self._timeout_seconds:g}s"
        except aiohttp.ClientError as error:
            return f"{promql}: {type(error).__name__}: {error}"
        if not isinstance(body, dict) or body.get("status") != "success":
            detail = body.get("error", body) if isinstance(body, dict) else body
            return f"{promql}: Prometheus answered {detail!r}"
        data = body.get("data") or {}
        if data.get("resultType") != "vector":
            return f"{promql}: expected a vector result, got {data.get('resultType')!r}"
        values: dict[str, float] = {}
        for item in data.get("result") or []:
            key = (item.get("metric") or {}).get("reason", "")
            values[key] = values.get(key, 0.0) + float(item["value"][1])
        return values

    async def read(self) -> Reading:
        """Run the four queries; any failure gives no window (figures would not match)."""
        names = list(self.queries())
        results = await asyncio.gather(*(self._query(q) for q in self.queries().values()))
        errors = tuple(r for r in results if isinstance(r, str))
        answered = sum(1 for r in results if not isinstance(r, str))
        if errors:
            return Reading(window=None, errors=errors, scraped=answered)
        by_name = {n: r for n, r in zip(names, results, strict=True) if isinstance(r, dict)}
        cost = by_name["cost"]
        return Reading(
            window=decision.Window(
                window_seconds=float(self._window),
                requests=sum(by_name["requests"].values()),
                escalations=dict(by_name["escalations"]),
                overflow_spend_usd=cost.get(decision.OVERFLOW, 0.0),
                avg_inflight=sum(by_name["inflight"].values()),
            ),
            errors=(),
            scraped=answered,
        )
