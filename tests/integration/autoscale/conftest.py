"""A real prometheus_client registry with the gateway's pool metrics."""

from __future__ import annotations

import prometheus_client
import pytest


class GatewayMetrics:
    """The four pool metrics of the gateway contract, in their own registry."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            "kascade_pool_requests", "Requests", ["pool"], registry=self.registry
        )
        self.escalations = prometheus_client.Counter(
            "kascade_pool_escalations", "Escalations", ["pool", "reason"], registry=self.registry
        )
        self.cost = prometheus_client.Counter(
            "kascade_pool_escalation_cost_usd",
            "USD",
            ["pool", "reason"],
            registry=self.registry,
        )
        self.inflight = prometheus_client.Gauge(
            "kascade_pool_inflight_requests", "In flight", ["pool"], registry=self.registry
        )

    def serve(
        self,
        *,
        pool: str,
        requests: int = 0,
        inflight: float | None = None,
        escalations: dict[str, tuple[int, float]] | None = None,
    ) -> None:
        """Count ``requests``, escalations {reason: (count, usd)} and set in-flight."""
        if requests:
            self.requests.labels(pool=pool).inc(requests)
        for reason, (count, usd) in (escalations or {}).items():
            self.escalations.labels(pool=pool, reason=reason).inc(count)
            self.cost.labels(pool=pool, reason=reason).inc(usd)
        if inflight is not None:
            self.inflight.labels(pool=pool).set(inflight)

    def text(self) -> str:
        """The /metrics body."""
        return prometheus_client.generate_latest(self.registry).decode()


@pytest.fixture
def gateway_metrics() -> type[GatewayMetrics]:
    """The class, so a test can make several replicas (and 'restart' one)."""
    return GatewayMetrics
