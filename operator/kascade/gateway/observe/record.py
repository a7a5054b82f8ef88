"""The record step: Prometheus metrics and one audit line per request."""

from __future__ import annotations

import time

from kascade.gateway.observe import audit as audit_mod
from kascade.gateway.observe import metrics as metrics_mod
from kascade.gateway.route import decision as decision_mod
from kascade.gateway.route import request


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
    if chat.tools or d.tool_calls:
        expert = d.route.removeprefix("expert:") if d.route.startswith("expert:") else ""
        m.observe_tools(
            policy=d.policy.name, expert=expert, offered=chat.tools, called=d.tool_calls
        )
    if not d.policy.config.audit.enabled or not audit.enabled:
        return
    outcome = d.outcome
    line = {
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
        "tools_offered": list(chat.tools),
        "tool_calls": list(d.tool_calls),
        "response_format": chat.response_format,
        "format_problem": d.format_problem,
        "prompt_tokens_estimate": chat.prompt_estimate,
        "duration_ms": round(elapsed * 1000, 3),
    }
    if d.policy.config.audit.include_prompts:
        line.update(_prompts(chat=chat, d=d))
    audit.write(line)


def _prompts(*, chat: request.ChatRequest, d: decision_mod.Decision) -> dict[str, object]:
    """Message text and tool-call arguments, redacted by the policy's detectors whatever
    its privacy action (an audit log is not where personal data may go)."""
    scanner = d.policy.scanner

    def redact(text: str) -> str:
        return scanner.redact_text(text, counts={}) if scanner.enabled else text

    return {
        "messages": [
            {"role": str(m.get("role")), "text": redact(request.text_of(m.get("content")))}
            for m in chat.messages
        ],
        "tool_call_arguments": [redact(a) for a in d.tool_arguments],
    }
