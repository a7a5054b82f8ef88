"""The gateway's real metrics (``kascade.gateway.observe.metrics.Metrics``) driven by hand, so
the autoscaler's tests read exactly what a gateway replica exposes."""

from __future__ import annotations

from kascade.gateway.observe import metrics as gateway_metrics


class GatewayMetrics:
    """One gateway replica's metrics registry, with the pool families set directly."""

    def __init__(self) -> None:
        self.metrics = gateway_metrics.Metrics()

    def serve(
        self,
        *,
        pool: str,
        requests: int = 0,
        inflight: float | None = None,
        escalations: dict[str, tuple[int, float]] | None = None,
    ) -> None:
        """Count ``requests``, escalations {reason: (count, usd)} and set in-flight."""
        m = self.metrics
        if requests:
            m.pool_requests.labels(pool=pool).inc(requests)
        for reason, (count, usd) in (escalations or {}).items():
            m.pool_escalations.labels(pool=pool, reason=reason).inc(count)
            m.pool_escalation_cost.labels(pool=pool, reason=reason).inc(usd)
        if inflight is not None:
            m.pool_inflight.labels(pool=pool).set(inflight)

    def text(self) -> str:
        """The /metrics body."""
        return self.metrics.render().decode()
