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
    _observe(metrics, chat=chat, d=d, status=status, elapsed=elapsed)
    if not d.policy.config.audit.enabled or not audit.enabled:
        return
    line = _audit_line(chat=chat, d=d, status=status, elapsed=elapsed)
    if d.policy.config.audit.include_prompts:
        line.update(_prompts(chat=chat, d=d))
    audit.write(line)


def _observe(
    m: metrics_mod.Metrics,
    *,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    status: int,
    elapsed: float,
) -> None:
    """The request's Prometheus metrics (and the policy's status figures)."""
    route_label = d.route if not d.route.startswith("expert:") else "expert"
    m.observe_request(policy=d.policy.name, route=route_label, reason=d.reason, seconds=elapsed)
    m.observe_tenant(
        tenant=d.caller.label,
        policy=d.policy.name,
        route=route_label,
        expert=d.outcome.expert if d.outcome else None,
        usd=d.cost_nanos / 1_000_000_000,
    )
    m.policy_stats.observe(
        policy=d.policy.name,
        generation=d.policy.config.generation,
        route=d.route,
        cache=d.cache,
        cost_nanos=d.cost_nanos,
    )
    if d.policy.variant is not None:
        m.observe_variant(
            policy=d.policy.name,
            variant=d.policy.variant,
            route=route_label,
            reason=d.reason,
            usd=d.cost_nanos / 1_000_000_000,
        )
    if d.confidence is not None and d.cache in ("off", "miss"):
        m.confidence.labels(d.policy.name).observe(d.confidence)
    m.http_responses.labels(d.policy.name, f"{status // 100}xx").inc()
    if d.threshold is not None:
        m.threshold.labels(d.policy.name).set(d.threshold)
    if route_label != "error":
        usd = d.cost_nanos / 1_000_000_000
        baseline = usd if route_label == "expert" else baseline_usd(d, chat)
        m.observe_answer(policy=d.policy.name, task=d.task, usd=usd, baseline_usd=baseline)
    if chat.tools or d.tool_calls:
        expert = d.route.removeprefix("expert:") if d.route.startswith("expert:") else ""
        m.observe_tools(
            policy=d.policy.name, expert=expert, offered=chat.tools, called=d.tool_calls
        )


def _audit_line(
    *, chat: request.ChatRequest, d: decision_mod.Decision, status: int, elapsed: float
) -> dict[str, object]:
    """The request's audit line (without prompts)."""
    outcome = d.outcome
    return {
        "type": "request",
        "request_id": d.request_id,
        "policy": d.policy.name,
        "tenant": d.caller.label,
        "generation": d.policy.config.generation,
        "variant": d.policy.variant,
        "status": status,
        "route": d.route,
        "reason": d.reason,
        "degraded": d.degraded is not None,
        "confidence": d.confidence,
        "threshold": None if d.threshold is None else round(d.threshold, 4),
        "threshold_learned": d.threshold_learned,
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
        "degeneration": d.degeneration,
        "stream": chat.stream,
        "tools_offered": list(chat.tools),
        "tool_calls": list(d.tool_calls),
        "response_format": chat.response_format,
        "format_problem": d.format_problem,
        "prompt_tokens_estimate": chat.prompt_estimate,
        "duration_ms": round(elapsed * 1000, 3),
    }


def _prompts(*, chat: request.ChatRequest, d: decision_mod.Decision) -> dict[str, object]:
    """Message text and tool-call arguments, redacted by the policy's detectors whatever
    its privacy action (an audit log is not where personal data may go). The messages
    come from the privacy step's redacted copy when it ran (no second scan here, on the
    event loop); requests refused before it are redacted now."""
    scanner = d.policy.scanner

    def redact(text: str) -> str:
        return scanner.redact_text(text, counts={}) if scanner.enabled else text

    if d.prompt is not None:
        texts = [(m.get("role"), request.text_of(m.get("content"))) for m in d.prompt]
    else:
        texts = [(m.get("role"), redact(request.text_of(m.get("content")))) for m in chat.messages]
    return {
        "messages": [{"role": str(role), "text": text} for role, text in texts],
        "tool_call_arguments": [redact(a) for a in d.tool_arguments],
    }


def baseline_usd(d: decision_mod.Decision, chat: request.ChatRequest) -> float:
    """What a locally (or cache-) answered request would have cost from the policy's
    first expert, at its prices: the answer's reported tokens, else the prompt
    estimate and no completion tokens."""
    if not d.policy.experts:
        return 0.0
    pricing = d.policy.experts[0].config.pricing
    usage = d.usage or {}
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    prompt_tokens = prompt if isinstance(prompt, int) else chat.prompt_estimate
    completion_tokens = completion if isinstance(completion, int) else 0
    return (
        prompt_tokens * pricing.input_per_million_tokens
        + completion_tokens * pricing.output_per_million_tokens
    ) / 1_000_000
