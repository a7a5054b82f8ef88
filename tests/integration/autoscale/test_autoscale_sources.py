"""Metric sources against real HTTP servers on 127.0.0.1.

The gateway replicas are aiohttp servers serving the text of real prometheus_client
registries. No Prometheus binary exists here, so the Prometheus source talks to a small
aiohttp server answering the real ``/api/v1/query`` JSON shape (success and error).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import test_utils, web

from kascade.controller import autoscale


class Clock:
    """A clock the test moves by hand (read once per scrape round)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Any]]:
    servers: list[test_utils.TestServer] = []

    async def start(app: web.Application) -> str:
        server = test_utils.TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


def replica_app(holder: dict[str, Any]) -> web.Application:
    """Serves holder['metrics'].text(), so a test can swap the registry (a restart)."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=holder["metrics"].text().encode(),
            content_type="text/plain",
            charset="utf-8",
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


def app_answering(handler: Callable[[web.Request], Any]) -> web.Application:
    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


@pytest.fixture
def closed_port() -> int:
    # A port that was free a moment ago and has nothing listening on it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return port


def lister(addresses: list[str]) -> Callable[[], Any]:
    async def endpoints() -> list[str]:
        return list(addresses)

    return endpoints


async def test_scrape_source_sums_replicas_and_handles_a_restart(
    gateway_metrics: Any, serve: Any, session: aiohttp.ClientSession
) -> None:
    a = {"metrics": gateway_metrics()}
    b = {"metrics": gateway_metrics()}
    a["metrics"].serve(pool="small", requests=100, inflight=2, escalations={"overflow": (5, 0.05)})
    b["metrics"].serve(pool="small", requests=40, inflight=2)
    addresses = [await serve(replica_app(a)), await serve(replica_app(b))]
    clock = Clock()
    source = autoscale.GatewayScrapeSource(
        pool="small", endpoints=lister(addresses), session=session, clock=clock
    )

    first = await source.read()
    assert first == autoscale.Reading(window=None, errors=(), scraped=2)

    a["metrics"].serve(pool="small", requests=30, inflight=4, escalations={"overflow": (6, 0.06)})
    b["metrics"] = gateway_metrics()  # replica b restarted
    b["metrics"].serve(pool="small", requests=12, inflight=2, escalations={"overflow": (1, 0.01)})
    clock.now += 30
    second = await source.read()

    assert second.errors == ()
    assert second.scraped == 2
    assert second.window is not None
    assert second.window.window_seconds == 30
    assert second.window.requests == 42
    assert second.window.escalations["overflow"] == 7
    assert second.window.overflow_spend_usd == pytest.approx(0.07)
    assert second.window.avg_inflight == 5  # (2+4)/2 + (2+2)/2


async def test_scrape_source_tolerates_and_reports_failing_replicas(
    gateway_metrics: Any, serve: Any, session: aiohttp.ClientSession, closed_port: int
) -> None:
    healthy = {"metrics": gateway_metrics()}
    healthy["metrics"].serve(pool="small", requests=10, inflight=1)

    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    # Never answers on its own: released only once the read has returned, so the read
    # can return at all only by cutting this replica off.
    release = asyncio.Event()
    slow_asked: list[bool] = []

    async def slow(_: web.Request) -> web.Response:
        slow_asked.append(True)
        await release.wait()
        return web.Response(text="")

    async def garbage(_: web.Request) -> web.Response:
        return web.Response(text='kascade_pool_requests_total{pool="small" 1\n')

    ok = await serve(replica_app(healthy))
    failing = {
        "500": await serve(app_answering(broken)),
        "slow": await serve(app_answering(slow)),
        "garbage": await serve(app_answering(garbage)),
        "closed": f"127.0.0.1:{closed_port}",
    }
    clock = Clock()
    source = autoscale.GatewayScrapeSource(
        pool="small",
        endpoints=lister([ok, *failing.values()]),
        session=session,
        timeout_seconds=0.5,
        clock=clock,
    )

    await source.read()
    healthy["metrics"].serve(pool="small", requests=20, inflight=3)
    clock.now += 30
    try:
        async with asyncio.timeout(60):  # only turns a hang into a clear failure
            reading = await source.read()
    except TimeoutError:
        pytest.fail("the read waited for the replica that never answers")
    finally:
        release.set()

    assert len(slow_asked) == 2  # asked in both rounds, cut off in both
    assert reading.scraped == 1
    assert reading.window is not None
    assert reading.window.requests == 20
    by_address = {line.split(": ", 1)[0]: line for line in reading.errors}
    assert set(by_address) == set(failing.values())
    assert "HTTP 500 from /metrics" in by_address[failing["500"]]
    assert "no answer within 0.5s" in by_address[failing["slow"]]
    assert "not Prometheus text format" in by_address[failing["garbage"]]
    assert "ClientConnectorError" in by_address[failing["closed"]]


async def test_scrape_source_without_endpoints_says_so(session: aiohttp.ClientSession) -> None:
    source = autoscale.GatewayScrapeSource(pool="small", endpoints=lister([]), session=session)
    reading = await source.read()
    assert reading == autoscale.Reading(
        window=None, errors=("no gateway endpoints to scrape",), scraped=0
    )


async def test_scrape_source_feeds_the_autoscaler_to_a_scale_up(
    gateway_metrics: Any, serve: Any, session: aiohttp.ClientSession
) -> None:
    replica = {"metrics": gateway_metrics()}
    address = await serve(replica_app(replica))
    clock = Clock()
    source = autoscale.GatewayScrapeSource(
        pool="small", endpoints=lister([address]), session=session, clock=clock
    )
    policy = autoscale.ScalingPolicy(
        min_replicas=1,
        max_replicas=3,
        max_concurrent_per_replica=1,
        cost_per_replica_hour=0.05,
        target_utilization=0.8,
        scale_up_stabilization_seconds=60,
        scale_down_stabilization_seconds=300,
    )
    scaler = autoscale.PoolAutoscaler()
    decisions = []
    for _ in range(3):
        reading = await source.read()
        decisions.append(
            scaler.observe(now=clock.now, window=reading.window, current_replicas=1, policy=policy)
        )
        # A saturated pool: 8 overflow escalations at $0.001 per 30 s, $0.96/h.
        replica["metrics"].serve(
            pool="small", requests=20, inflight=1, escalations={"overflow": (8, 0.008)}
        )
        clock.now += 30

    assert [d.code for d in decisions] == [
        "NoMetrics",
        "Stabilizing",
        "OverflowSpendAboveReplicaCost",
    ]
    assert decisions[-1].desired == 2
    assert "overflow escalations cost $0.96/h > one replica $0.05/h" in decisions[-1].reason


def prometheus_app(answers: dict[str, Any], seen: list[str]) -> web.Application:
    """Answers /api/v1/query like Prometheus: vectors for known queries, errors otherwise."""

    async def query(request: web.Request) -> web.Response:
        promql = request.query.get("query", "")
        seen.append(promql)
        if promql not in answers:
            return web.json_response(
                {"status": "error", "errorType": "bad_data", "error": f"unknown query {promql}"},
                status=400,
            )
        result = [
            {"metric": labels, "value": [1732700000.123, str(value)]}
            for labels, value in answers[promql]
        ]
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    return app


async def test_prometheus_source_reads_the_window(
    serve: Any, session: aiohttp.ClientSession
) -> None:
    answers = {
        'sum(increase(kascade_pool_requests_total{pool="small"}[120s]))': [({}, 480.0)],
        'sum by (reason) (increase(kascade_pool_escalations_total{pool="small"}[120s]))': [
            ({"reason": "overflow"}, 40.0),
            ({"reason": "low_confidence"}, 12.0),
        ],
        'sum by (reason) (increase(kascade_pool_escalation_cost_usd_total{pool="small"}[120s]))': [
            ({"reason": "overflow"}, 0.08),
            ({"reason": "low_confidence"}, 3.5),
        ],
        'sum(avg_over_time(kascade_pool_inflight_requests{pool="small"}[120s]))': [({}, 3.5)],
    }
    seen: list[str] = []
    address = await serve(prometheus_app(answers, seen))
    source = autoscale.PrometheusSource(
        pool="small", base_url=f"http://{address}/", session=session, window_seconds=120
    )

    reading = await source.read()

    assert sorted(seen) == sorted(answers)
    assert reading.errors == ()
    assert reading.window == autoscale.Window(
        window_seconds=120,
        requests=480,
        escalations={"overflow": 40, "low_confidence": 12},
        overflow_spend_usd=0.08,
        avg_inflight=3.5,
    )


async def test_prometheus_source_reports_api_errors_and_gives_no_window(
    serve: Any, session: aiohttp.ClientSession, closed_port: int
) -> None:
    seen: list[str] = []
    address = await serve(prometheus_app({}, seen))
    source = autoscale.PrometheusSource(pool="small", base_url=f"http://{address}", session=session)
    reading = await source.read()
    assert reading.window is None
    assert len(reading.errors) == 4
    assert all("Prometheus answered" in e and "unknown query" in e for e in reading.errors)

    unreachable = autoscale.PrometheusSource(
        pool="small", base_url=f"http://127.0.0.1:{closed_port}", session=session
    )
    reading = await unreachable.read()
    assert reading.window is None
    assert all("ClientConnectorError" in e for e in reading.errors)
