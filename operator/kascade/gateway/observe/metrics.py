"""Prometheus metrics of one gateway process (own registry, so tests can build many)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kascade.gateway.observe import policy_stats as policy_stats_mod

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# Tool names come from clients: past this many distinct names they count as "other",
# so a client cannot grow the metric without bound.
MAX_TOOL_LABELS = 256


class Metrics:
    """The gateway's metric families; label children are created on first use."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._escalation_children: dict[tuple[str, str, str], Any] = {}
        self._cost_children: dict[str, Any] = {}
        r = self.registry
        self.requests = Counter(
            "kascade_requests_total",
            "Chat completion requests by policy, route and reason.",
            ["policy", "route", "reason"],
            registry=r,
        )
        self.escalations = Counter(
            "kascade_escalations_total",
            "Escalations to cloud experts by reason (low_confidence, overflow, rule, local_error).",
            ["policy", "expert", "reason"],
            registry=r,
        )
        self.expert_cost = Counter(
            "kascade_expert_cost_usd_total",
            "USD spent on cloud experts (settled actual cost).",
            ["expert"],
            registry=r,
        )
        self.duration = Histogram(
            "kascade_request_duration_seconds",
            "Request duration by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.confidence = Histogram(
            "kascade_confidence",
            "Confidence of local answers.",
            ["policy"],
            buckets=_CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "kascade_cache_hits_total",
            "Cache hits by kind (exact, semantic).",
            ["kind"],
            registry=r,
        )
        self.budget_remaining = Gauge(
            "kascade_budget_remaining_usd",
            "Budget left in the current window per expert (as last seen by this replica).",
            ["expert"],
            registry=r,
        )
        self.expert_errors = Counter(
            "kascade_expert_errors_total",
            "Failed expert attempts by error kind.",
            ["expert", "error"],
            registry=r,
        )
        # Per-pool figures the operator's autoscaler reads (docs/autoscaling.md): more
        # replicas only help against overflow, so escalations are counted by reason.
        self.pool_requests = Counter(
            "kascade_pool_requests_total",
            "Requests that reached (or tried) a pool's local pass.",
            ["pool"],
            registry=r,
        )
        self.pool_escalations = Counter(
            "kascade_pool_escalations_total",
            "Escalations of a pool's requests by reason.",
            ["pool", "reason"],
            registry=r,
        )
        self.pool_escalation_cost = Counter(
            "kascade_pool_escalation_cost_usd_total",
            "USD settled for escalations of a pool's requests, by reason.",
            ["pool", "reason"],
            registry=r,
        )
        self.pool_inflight = Gauge(
            "kascade_pool_inflight_requests",
            "Requests in a pool's local pass at this gateway replica.",
            ["pool"],
            registry=r,
        )
        self.privacy_detections = Counter(
            "kascade_privacy_detections_total",
            "Requests in which personal data was detected, by detector and action taken.",
            ["policy", "kind", "action"],
            registry=r,
        )
        self.tools_offered = Counter(
            "kascade_tools_offered_total",
            "Tools (function names) offered in requests, per policy.",
            ["policy", "tool"],
            registry=r,
        )
        self.tool_calls = Counter(
            "kascade_tool_calls_total",
            "Tool calls in answers by policy, expert ('' for local and cached answers) "
            "and function name.",
            ["policy", "expert", "tool"],
            registry=r,
        )
        self._tool_labels: set[str] = set()
        self.feedback = Counter(
            "kascade_feedback_total",
            "Feedback ratings received.",
            ["policy", "rating"],
            registry=r,
        )
        # Not Prometheus: per-policy figures for the status document (policy status.stats).
        self.policy_stats = policy_stats_mod.PolicyStats()

    def observe_request(self, *, policy: str, route: str, reason: str, seconds: float) -> None:
        """Counts one request and its duration (label children are cached: the
        prometheus_client label lookup takes a lock and costs more than the update)."""
        key = (policy, route, reason)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(policy, route, reason),
                self.duration.labels(route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_escalation(self, *, policy: str, expert: str, reason: str) -> None:
        """Counts one answered escalation."""
        key = (policy, expert, reason)
        child = self._escalation_children.get(key)
        if child is None:
            child = self._escalation_children[key] = self.escalations.labels(*key)
        child.inc()

    def observe_cost(self, *, expert: str, usd: float) -> None:
        """Adds settled cost."""
        child = self._cost_children.get(expert)
        if child is None:
            child = self._cost_children[expert] = self.expert_cost.labels(expert)
        child.inc(usd)

    def observe_pool_escalation(self, *, pool: str, reason: str, usd: float) -> None:
        """Counts one escalation of a pool's request and what it cost."""
        self.pool_escalations.labels(pool, reason).inc()
        if usd > 0:
            self.pool_escalation_cost.labels(pool, reason).inc(usd)

    def _tool_label(self, name: str) -> str:
        if name in self._tool_labels:
            return name
        if len(self._tool_labels) >= MAX_TOOL_LABELS:
            return "other"
        self._tool_labels.add(name)
        return name

    def observe_tools(
        self, *, policy: str, expert: str, offered: tuple[str, ...], called: tuple[str, ...]
    ) -> None:
        """Counts the tools a request offered and the tool calls its answer made."""
        for name in offered:
            self.tools_offered.labels(policy, self._tool_label(name)).inc()
        for name in called:
            self.tool_calls.labels(policy, expert, self._tool_label(name)).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
