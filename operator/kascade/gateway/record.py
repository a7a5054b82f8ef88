"""The record step: Prometheus metrics and one audit line per request."""

from __future__ import annotations

import time

from kascade.gateway import audit as audit_mod
from kascade.gateway import decision as decision_mod
from kascade.gateway import metrics as metrics_mod
from kascade.gateway import request


def record(
    *,
    metrics: metrics_mod.Metrics,
    audit: audit_mod.AuditLog,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    status: int,
    started: float,
) -> None:
    elapsed = time.perf_counter() - started
    m = metrics
    route_label = d.route if not d.route.startswith("expert:") else "expert"
    m.observe_request(policy=d.policy.name, route=route_label, reason=d.reason, seconds=elapsed)
    m.policy_stats.observe(
        policy=d.policy.name,
        generation=d.policy.config.generation,
        route=d.route,
        cache=d.cache,
        cost_nanos=d.cost_nanos,
    )
    if d.confidence is not None and d.cache in ("off", "miss"):
        m.confidence.labels(d.policy.name).observe(d.confidence)
    if not d.policy.config.audit.enabled or not audit.enabled:
        return
    outcome = d.outcome
    audit.write(
        {
            "type": "request",
            "request_id": d.request_id,
            "policy": d.policy.name,
            "generation": d.policy.config.generation,
            "status": status,
            "route": d.route,
            "reason": d.reason,
            "degraded": d.degraded is not None,
            "confidence": d.confidence,
            "threshold": None if d.threshold is None else round(d.threshold, 4),
            "method": d.policy.config.confidence.method,
            "rule": d.rule,
            "rule_name": d.rule_name,
            "expert": outcome.expert if outcome else None,
            "attempts": outcome.attempts if outcome else [],
            "cost_usd": decision_mod.usd_text(d.cost_nanos),
            "cache": d.cache,
            "similarity": d.similarity,
            "privacy_action": d.policy.config.privacy.action,
            "pii_found": d.pii,
            "local_error": d.local_error,
            "stream": chat.stream,
            "prompt_tokens_estimate": chat.prompt_estimate,
            "duration_ms": round(elapsed * 1000, 3),
        }
    )
