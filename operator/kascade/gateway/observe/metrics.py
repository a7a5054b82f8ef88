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
        self._answer_children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        r = self.registry
        # Registration order is exposition order: the helpers run in the order the
        # families were always declared, so /metrics output does not move.
        self._init_request_families(r)
        self._init_cache_and_expert_families(r)
        self._init_pool_families(r)
        self._init_privacy_and_tool_families(r)
        self._init_tenant_families(r)
        self._init_billing_families(r)
        self._init_loop_families(r)
        self._init_dashboard_families(r)
        self._init_quality_families(r)
        self._init_variant_families(r)
        # Not Prometheus: per-policy figures for the status document (policy status.stats).
        self.policy_stats = policy_stats_mod.PolicyStats()

    def _init_request_families(self, r: CollectorRegistry) -> None:
        """Requests by route, escalations, expert cost, duration and confidence."""
        self.requests = Counter(
            "kascade_requests_total",
            "Chat completion requests by policy, route and reason.",
            ["policy", "route", "reason"],
            registry=r,
        )
        self.escalations = Counter(
            "kascade_escalations_total",
            "Escalations to cloud experts by reason (low_confidence, degenerate, overflow, "
            "rule, local_error, invalid_format, prompt_too_long).",
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

    def _init_cache_and_expert_families(self, r: CollectorRegistry) -> None:
        """Cache hits, per-expert budget left and expert errors."""
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

    def _init_pool_families(self, r: CollectorRegistry) -> None:
        """Per-pool requests, escalations and their cost, and requests in flight."""
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

    def _init_privacy_and_tool_families(self, r: CollectorRegistry) -> None:
        """Privacy detections, tools offered and called, feedback."""
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
        self.feedback_labels = Counter(
            "kascade_feedback_labels_total",
            "Ratings that labelled a local answer for a learned threshold "
            "(confidence.target.feedbackLabels), by arm and label (right, wrong).",
            ["policy", "variant", "label"],
            registry=r,
        )

    def _init_tenant_families(self, r: CollectorRegistry) -> None:
        """Requests, escalations and cost per tenant."""
        # `tenant` is a declared Tenant name, `anonymous` or `authenticated` (flat
        # `auth` keys): never caller-supplied text, so its cardinality is bounded.
        self.tenant_requests = Counter(
            "kascade_tenant_requests_total",
            "Chat completion requests by tenant, policy and route.",
            ["tenant", "policy", "route"],
            registry=r,
        )
        self.tenant_escalations = Counter(
            "kascade_tenant_escalations_total",
            "Answered escalations to cloud experts by tenant and expert.",
            ["tenant", "expert"],
            registry=r,
        )
        self.tenant_cost = Counter(
            "kascade_tenant_cost_usd_total",
            "USD spent on cloud experts by tenant (settled actual cost).",
            ["tenant"],
            registry=r,
        )

    def _init_billing_families(self, r: CollectorRegistry) -> None:
        """How expert attempts were settled, and the signs of a bad bound."""
        # Billing (docs/ledger.md): how each expert attempt was settled, and the two
        # signals that something is off: a Retry-After cut to the cap, and reported
        # usage above the worst case that was reserved (a bug in the bound, or a
        # provider reporting what no request could produce).
        self.settlements = Counter(
            "kascade_expert_settlements_total",
            "Expert attempts by settlement: usage (reported), worst_case, released.",
            ["expert", "settlement"],
            registry=r,
        )
        self.retry_after_capped = Counter(
            "kascade_expert_retry_after_capped_total",
            "Upstream Retry-After values longer than retries.maxRetryAfterSeconds.",
            ["expert"],
            registry=r,
        )
        self.usage_above_reservation = Counter(
            "kascade_expert_usage_above_reservation_total",
            "Attempts whose reported usage cost more than their reserved worst case.",
            ["expert"],
            registry=r,
        )

    def _init_loop_families(self, r: CollectorRegistry) -> None:
        """Event-loop stall and lag of this process."""
        self.loop_stall_max = Gauge(
            "kascade_event_loop_stall_max_seconds",
            "Longest event-loop stall of this process: how late a 5 ms timer fired, "
            "counting only time the loop's thread was on the CPU.",
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "kascade_event_loop_lag_max_seconds",
            "Longest event-loop lag of this process: how late a 5 ms timer fired, in wall "
            "time (includes time the process was descheduled).",
            registry=r,
        )

    def _init_dashboard_families(self, r: CollectorRegistry) -> None:
        # What the chart's dashboard and alerts need beyond the families above
        # (docs/observability.md). Budget, circuit and ledger gauges are set at scrape
        # time (observe/scrape.py); the rest per request (observe/record.py).
        self._init_budget_ledger_families(r)
        self._init_answer_families(r)

    def _init_budget_ledger_families(self, r: CollectorRegistry) -> None:
        """Budget window, circuit breaker and ledger gauges (set at scrape time)."""
        self.budget_limit = Gauge(
            "kascade_budget_limit_usd",
            "Budget limit of the current window per expert.",
            ["expert"],
            registry=r,
        )
        self.budget_spent = Gauge(
            "kascade_budget_spent_usd",
            "Settled spend in the current budget window per expert.",
            ["expert"],
            registry=r,
        )
        self.budget_reserved = Gauge(
            "kascade_budget_reserved_usd",
            "Outstanding reservations (calls in flight, worst case) per expert.",
            ["expert"],
            registry=r,
        )
        self.budget_window_end = Gauge(
            "kascade_budget_window_end_timestamp_seconds",
            "When the current budget window resets (rolling-24h: now plus 24 hours).",
            ["expert"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "kascade_circuit_breaker_state",
            "Circuit breaker of each expert at this replica: 0 closed, 1 half-open, 2 open.",
            ["expert"],
            registry=r,
        )
        self.ledger_up = Gauge(
            "kascade_ledger_up",
            "1 when the budget ledger answered at the last scrape, else 0.",
            registry=r,
        )

    def _init_answer_families(self, r: CollectorRegistry) -> None:
        """Threshold, per-task requests and cost, baseline cost, HTTP responses."""
        self.threshold = Gauge(
            "kascade_confidence_threshold",
            "Confidence threshold applied to the policy's last local answer.",
            ["policy"],
            registry=r,
        )
        self.task_requests = Counter(
            "kascade_task_requests_total",
            "Answered requests by task label (a label a policy rule names, else other).",
            ["policy", "task"],
            registry=r,
        )
        self.request_cost = Counter(
            "kascade_request_cost_usd_total",
            "USD settled for requests' expert calls, by policy and task label.",
            ["policy", "task"],
            registry=r,
        )
        self.baseline_cost = Counter(
            "kascade_baseline_cost_usd_total",
            "What the same answers would have cost from the policy's first expert.",
            ["policy", "task"],
            registry=r,
        )
        self.http_responses = Counter(
            "kascade_http_responses_total",
            "Chat completion responses by status class (2xx, 4xx, 5xx).",
            ["policy", "code"],
            registry=r,
        )

    def _init_quality_families(self, r: CollectorRegistry) -> None:
        """A declared quality target: learned threshold, its labels, shadow calls."""
        # A declared quality target (confidence.target): the learned threshold, what it
        # rests on, and the shadow calls that label local answers (route/shadow.py).
        self.learned_threshold = Gauge(
            "kascade_learned_threshold",
            "Confidence threshold learned for a quality target, per policy, task (* = all) "
            'and A/B variant ("" = none).',
            ["policy", "task", "variant"],
            registry=r,
        )
        self.quality_labels = Gauge(
            "kascade_quality_labels",
            "Labels (local answers judged against the expert) in the calibration window.",
            ["policy", "task", "variant"],
            registry=r,
        )
        self.local_error_estimate = Gauge(
            "kascade_local_error_estimate",
            "Observed error rate of labelled local answers at the learned threshold.",
            ["policy", "task", "variant"],
            registry=r,
        )
        self.shadow_calls = Counter(
            "kascade_shadow_calls_total",
            "Shadow calls to experts by outcome "
            "(answered, refused_share, ledger_unavailable, failed).",
            ["policy", "variant", "expert", "outcome"],
            registry=r,
        )
        self.shadow_cost = Counter(
            "kascade_shadow_cost_usd_total",
            "USD settled for shadow calls (part of the expert's spend).",
            ["expert"],
            registry=r,
        )

    def _init_variant_families(self, r: CollectorRegistry) -> None:
        """Requests and cost of a policy's A/B variants."""
        self.variant_requests = Counter(
            "kascade_variant_requests_total",
            "Requests of a policy's A/B variants by route and reason (variant: a name "
            "declared in the policy's spec.variants).",
            ["policy", "variant", "route", "reason"],
            registry=r,
        )
        self.variant_cost = Counter(
            "kascade_variant_cost_usd_total",
            "USD spent on cloud experts by a policy's A/B variant.",
            ["policy", "variant"],
            registry=r,
        )

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

    def observe_variant(
        self, *, policy: str, variant: str, route: str, reason: str, usd: float
    ) -> None:
        """Counts one request of an A/B variant and its expert cost."""
        self.variant_requests.labels(policy, variant, route, reason).inc()
        if usd > 0:
            self.variant_cost.labels(policy, variant).inc(usd)

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

    def observe_answer(self, *, policy: str, task: str, usd: float, baseline_usd: float) -> None:
        """Counts one answered request with what it cost and its all-expert baseline."""
        key = (policy, task)
        children = self._answer_children.get(key)
        if children is None:
            children = self._answer_children[key] = (
                self.task_requests.labels(*key),
                self.request_cost.labels(*key),
                self.baseline_cost.labels(*key),
            )
        children[0].inc()
        children[1].inc(usd)
        children[2].inc(baseline_usd)

    def observe_pool_escalation(self, *, pool: str, reason: str, usd: float) -> None:
        """Counts one escalation of a pool's request and what it cost."""
        self.pool_escalations.labels(pool, reason).inc()
        if usd > 0:
            self.pool_escalation_cost.labels(pool, reason).inc(usd)

    def observe_tenant(
        self, *, tenant: str, policy: str, route: str, expert: str | None, usd: float
    ) -> None:
        """Counts one request of a tenant, its escalation and its cost."""
        self.tenant_requests.labels(tenant, policy, route).inc()
        if expert is not None:
            self.tenant_escalations.labels(tenant, expert).inc()
        if usd > 0:
            self.tenant_cost.labels(tenant).inc(usd)

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
