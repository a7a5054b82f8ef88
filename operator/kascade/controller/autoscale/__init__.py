"""Autoscaling local model pools on why requests escalate.

Public surface (import the package, then use ``autoscale.<name>``):

- ``ScalingPolicy``, ``Window``, ``Signal``, ``DecisionInputs``, ``Decision``,
  ``decide``: the pure rule (``decision``).
- ``PoolAutoscaler``, ``policy_of``, ``last_scale_decision``: one pool's memory
  between decisions, the policy of a LocalModelPoolSpec, the status record (``scaler``).
- ``MetricsSource``, ``Reading``, ``GatewayScrapeSource``, ``PrometheusSource``,
  ``scrape_addresses``: where a pool's window comes from (``sources``).
- ``parse_metrics``, ``CounterTracker``: the gateway metrics contract (``metrics``).

Typical timer body::

    reading = await source.read()
    result = scaler.observe(now=time.time(), window=reading.window,
                            current_replicas=replicas, policy=policy)
    if result.desired != replicas: ...  # patch, status.lastScaleDecision, Event
"""

from kascade.controller.autoscale.decision import (
    Decision,
    DecisionInputs,
    ScalingPolicy,
    Signal,
    Window,
    decide,
)
from kascade.controller.autoscale.metrics import CounterTracker
from kascade.controller.autoscale.metrics import parse as parse_metrics
from kascade.controller.autoscale.scaler import PoolAutoscaler, last_scale_decision, policy_of
from kascade.controller.autoscale.sources import (
    GatewayScrapeSource,
    MetricsSource,
    PrometheusSource,
    Reading,
    scrape_addresses,
)

__all__ = [
    "CounterTracker",
    "Decision",
    "DecisionInputs",
    "GatewayScrapeSource",
    "MetricsSource",
    "PoolAutoscaler",
    "PrometheusSource",
    "Reading",
    "ScalingPolicy",
    "Signal",
    "Window",
    "decide",
    "last_scale_decision",
    "parse_metrics",
    "policy_of",
    "scrape_addresses",
]
