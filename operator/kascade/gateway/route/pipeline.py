"""The request pipeline: privacy → cache → rules → local pass → confidence →
escalation → record. One function per step; `handle_chat` reads as the recipe."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from kascade.gateway import runtime
from kascade.gateway.cache import memory as cache_mod
from kascade.gateway.cache import shared as shared_cache_mod
from kascade.gateway.endpoints import errors, inbound, responses
from kascade.gateway.experts import escalation
from kascade.gateway.observe import audit as audit_mod
from kascade.gateway.observe import metrics as metrics_mod
from kascade.gateway.observe import record
from kascade.gateway.route import capability, formats, local, pressure, request, rules
from kascade.gateway.route import confidence as confidence_mod
from kascade.gateway.route import decision as decision_mod

log = logging.getLogger("kascade.gateway")


@dataclass
class State:
    """Process-wide gateway state; `runtime` is swapped atomically on reload."""

    runtime: runtime.Runtime
    session: aiohttp.ClientSession
    escalator: escalation.Escalator
    pressure: pressure.Pressure
    metrics: metrics_mod.Metrics
    audit: audit_mod.AuditLog
    experts: dict[str, escalation.ExpertState]
    shared_cache: shared_cache_mod.SharedExactCache | None = None


class _LocalRejected(Exception):
    def __init__(self, error: errors.ApiError) -> None:
        self.error = error


async def handle_chat(state: State, http: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions."""
    started = time.perf_counter()
    rt = state.runtime  # This request keeps this config even if a reload happens.
    request_id = os.urandom(16).hex()  # as unique as uuid4, a quarter of the cost
    ids = {"x-kascade-request-id": request_id}
    try:
        inbound.authenticate(rt, http)
        raw = await inbound.read_body(http, limit=rt.config.limits.max_body_bytes)
        chat = request.parse(raw)
        policy = rt.policies.get(chat.model)
        if policy is None:
            raise errors.ApiError(
                status=404,
                message=f"The model `{chat.model}` does not exist: it must name a "
                f"RoutingPolicy of this gateway ({', '.join(sorted(rt.policies)) or 'none'}).",
                param="model",
                code="model_not_found",
            )
    except errors.ApiError as exc:
        state.metrics.requests.labels("", "error", exc.code or "invalid_request").inc()
        return exc.response(extra_headers=ids)
    decision = decision_mod.Decision(request_id=request_id, policy=policy)
    status = 200
    try:
        response = await _route(state, rt, http, chat, decision)
    except errors.ApiError as exc:
        status = exc.status
        decision.route = "error"
        response = exc.response(extra_headers=decision.headers())
    except Exception:
        # A bug or an unexpected upstream failure: answer in the OpenAI shape, and log
        # it with the request id (never the prompt).
        log.exception("Failed request_id=%s policy=%s", request_id, policy.name)
        status = 500
        decision.route, decision.reason = "error", "internal_error"
        response = errors.ApiError(
            status=500,
            message=f"The gateway failed to handle request {request_id}; see its logs.",
            type="server_error",
            code="internal_error",
        ).response(extra_headers=decision.headers())
    record.record(
        metrics=state.metrics,
        audit=state.audit,
        chat=chat,
        d=decision,
        status=status,
        started=started,
    )
    return response


async def _route(
    state: State,
    rt: runtime.Runtime,
    http: web.Request,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
) -> web.StreamResponse:
    policy = d.policy
    cfg = policy.config
    # 1. Privacy.
    outbound = chat.messages
    local_only = raw_pii = False
    if policy.scanner.enabled:
        scan = policy.scanner.scan(messages=chat.messages)
        d.pii = scan.counts
        if scan.found:
            if cfg.privacy.action == "redact" and scan.redacted_messages is not None:
                outbound = scan.redacted_messages
                done = "redacted"
            elif cfg.privacy.action == "local-only":
                local_only = True
                done = "local-only"
            else:
                raw_pii = True
                done = "allowed"
            kinds = sorted(kind for kind, count in scan.counts.items() if count)
            d.privacy = f"{done}:{','.join(kinds)}"
            for kind in kinds:
                state.metrics.privacy_detections.labels(policy.name, kind, done).inc()
    # 2. Cache.
    hit = _cache_lookup(state, chat, d)
    if hit is None and d.exact_key is not None and state.shared_cache is not None:
        hit = await _shared_lookup(state, d)
    if hit is not None:
        return await responses.respond(http, chat, d, completion=hit)
    # 3. Rules.
    matched = rules.match(
        rules=cfg.rules,
        prompt_tokens=chat.prompt_estimate,
        headers=http.headers,
        has_tools=bool(chat.tools),
        response_format=chat.response_format,
    )
    pool = policy.pool
    d.pool = cfg.local_pool
    experts = policy.experts
    escalate_reason: str | None = None
    if matched is not None:
        d.rule, rule = matched
        d.rule_name = rule.name
        if rule.action == "local":
            experts = []
        elif rule.action == "tier":
            assert rule.target is not None
            pool = rt.config.pools.get(rule.target, pool)
            d.pool = rule.target
        elif rule.action == "expert":
            if rule.target is not None:
                experts = [state.experts[rule.target]]
            escalate_reason = "rule"
    if local_only:  # Personal data under local-only outranks every rule.
        experts = []
        escalate_reason = None
    experts = capability.capable(experts=experts, chat=chat)
    # 4. Local pass (skipped when a rule sends the request straight to an expert).
    answer: local.LocalAnswer | None = None
    if escalate_reason is None:
        if chat.stream and not experts:
            d.reason = "local_only" if local_only else "no_escalation"
            return await responses.stream_local(state.session, http, chat, d, pool=pool)
        try:
            answer = await _local_pass(state, chat, d, pool=pool, can_escalate=bool(experts))
        except _LocalRejected as rejected:
            raise rejected.error from None
        except local.Overflow:
            escalate_reason = "overflow"
        except local.LocalFailure as failure:
            d.local_error = failure.kind
            escalate_reason = "local_error"
        if answer is not None:
            # 5. Confidence check.
            d.confidence = answer.confidence
            burn, unavailable = state.pressure.inputs(experts=experts)
            d.threshold = confidence_mod.threshold(
                confidence=cfg.confidence, burn=burn, unavailable_fraction=unavailable
            )
            if answer.confidence is None:
                d.reason = "confidence_unavailable"
            elif answer.confidence >= d.threshold:
                d.reason = "confident"
            else:
                escalate_reason = "low_confidence"
            d.format_problem = formats.problem(chat=chat, completion=answer.completion)
            if d.format_problem is not None:
                escalate_reason = "invalid_format"
            if escalate_reason is None or not experts:
                if escalate_reason is not None:
                    d.reason = "local_only" if local_only else "no_experts"
                _cache_store(state, chat, d, completion=answer.completion)
                return await responses.respond(http, chat, d, completion=answer.completion)
    assert escalate_reason is not None
    d.reason = escalate_reason
    if not experts:
        detail = f"local pool: {d.local_error or 'saturated'}; no expert may receive this request"
        raise responses.no_local_answer(d, detail=detail)
    # 6. Escalation.
    return await _escalate(
        state,
        http,
        chat,
        d,
        experts=experts,
        outbound=outbound,
        raw_pii=raw_pii,
        answer=answer,
        pool=pool,
    )


async def _local_pass(
    state: State,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    pool: Any,
    can_escalate: bool,
) -> local.LocalAnswer:
    cfg = d.policy.config
    method = cfg.confidence.method
    deadline = time.monotonic() + cfg.overflow_wait_millis / 1000
    state.metrics.pool_requests.labels(d.pool).inc()
    inflight = state.metrics.pool_inflight.labels(d.pool)
    while True:
        inflight.inc()
        try:
            return await local.complete(
                session=state.session, pool=pool, body=chat.body, method=method
            )
        except local.Overflow as overflow:
            if cfg.overflow == "escalate" and can_escalate:
                raise
            retry_after = overflow.retry_after if overflow.retry_after is not None else 1.0
            left = deadline - time.monotonic()
            if cfg.overflow == "wait" and left > 0:
                await asyncio.sleep(min(max(retry_after, 0.05), left))
                continue
            d.reason = "overflow"
            raise _LocalRejected(
                errors.ApiError(
                    status=429,
                    message="The local model pool is saturated; retry later.",
                    type="rate_limit_error",
                    code="pool_saturated",
                    headers={"retry-after": str(max(1, round(retry_after)))},
                )
            ) from None
        finally:
            inflight.dec()


async def _escalate(
    state: State,
    http: web.Request,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    experts: list[escalation.ExpertState],
    outbound: list[dict[str, Any]],
    raw_pii: bool,
    answer: local.LocalAnswer | None,
    pool: Any,
) -> web.StreamResponse:
    cfg = d.policy.config
    call = escalation.Call(
        request_id=d.request_id,
        messages=outbound,
        params=chat.params,
        requested_max_tokens=chat.max_tokens,
        prompt_bound=chat.prompt_bound,
        prompt_estimate=chat.prompt_estimate,
        raw_personal_data=raw_pii,
        max_cost_nanos=d.policy.max_cost_nanos,
    )
    ordered = state.escalator.order(experts=experts, selection=cfg.selection, call=call)
    streamed: list[web.StreamResponse] = []
    writer = responses.expert_stream_writer(http, d, streamed) if chat.stream else None
    outcome = await state.escalator.run(experts=ordered, call=call, stream_writer=writer)
    d.outcome = outcome
    d.cost_nanos = outcome.cost_nanos
    state.metrics.observe_pool_escalation(
        pool=d.pool, reason=d.reason, usd=outcome.cost_nanos / 1_000_000_000
    )
    if outcome.expert is not None:
        d.route = f"expert:{outcome.expert}"
        state.metrics.observe_escalation(
            policy=d.policy.name, expert=outcome.expert, reason=d.reason
        )
        if streamed:
            return streamed[0]
        assert outcome.answer is not None
        _cache_store(state, chat, d, completion=outcome.answer.completion)
        return await responses.respond(
            http, chat, d, completion=outcome.answer.completion, raw=outcome.answer.raw
        )
    if streamed:  # The stream broke after it started: nothing else can be sent.
        return streamed[0]
    # 7. Fallback: no expert answered.
    summary = outcome.failure_summary
    if outcome.ledger_unavailable:
        summary = "the budget ledger is unreachable, so escalation failed closed; " + summary
    if outcome.budget_rejected:
        raise errors.ApiError(
            status=429,
            message=f"Expert budget exhausted and the expert is set to reject ({summary}).",
            type="insufficient_quota",
            code="budget_exhausted",
        )
    if cfg.fallback.when_experts_unavailable == "error":
        raise errors.ApiError(
            status=503,
            message=f"{cfg.fallback.message} ({summary})",
            type="server_error",
            code="experts_unavailable",
        )
    if answer is None:
        try:
            answer = await local.complete(
                session=state.session,
                pool=pool,
                body=chat.body,
                method=cfg.confidence.method,
            )
        except (local.Overflow, local.LocalFailure) as exc:
            raise responses.no_local_answer(d, detail=f"{summary}; local pool: {exc}") from None
        d.confidence = answer.confidence
    d.degraded = f"{cfg.fallback.message} ({summary})"
    return await responses.respond(http, chat, d, completion=answer.completion)


def _cache_lookup(
    state: State, chat: request.ChatRequest, d: decision_mod.Decision
) -> dict[str, Any] | None:
    policy = d.policy
    if policy.exact is None and policy.semantic is None:
        return None
    d.cache = "miss"
    if policy.exact is not None:
        d.exact_key = cache_mod.exact_key(policy=policy.name, body=chat.body)
        entry = policy.exact.get(d.exact_key)
        if entry is not None:
            d.cache, d.route, d.reason = "exact", "cache", "cache_exact"
            d.confidence = entry.confidence
            state.metrics.cache_hits.labels("exact").inc()
            return entry.completion
    if policy.semantic is not None:
        context, text = cache_mod.semantic_parts(policy=policy.name, body=_key_body(chat))
        hit = policy.semantic.lookup(context=context, text=text)
        if hit is not None:
            d.cache, d.route, d.reason = "semantic", "cache", "cache_semantic"
            d.similarity = round(hit.similarity, 4)
            d.confidence = hit.entry.confidence
            state.metrics.cache_hits.labels("semantic").inc()
            return hit.entry.completion
    return None


async def _shared_lookup(state: State, d: decision_mod.Decision) -> dict[str, Any] | None:
    assert state.shared_cache is not None
    assert d.exact_key is not None
    entry = await state.shared_cache.get(d.exact_key)
    if entry is None:
        return None
    completion: dict[str, Any] = entry["completion"]
    confidence = entry.get("confidence")
    d.cache, d.route, d.reason = "exact", "cache", "cache_exact"
    d.confidence = confidence if isinstance(confidence, int | float) else None
    state.metrics.cache_hits.labels("exact").inc()
    if d.policy.exact is not None:  # Keep it near: the next hit costs no round trip.
        d.policy.exact.put(
            d.exact_key, completion=completion, route=str(entry.get("route")),
            confidence=d.confidence,
        )  # fmt: skip
    return completion


def _key_body(chat: request.ChatRequest) -> dict[str, Any]:
    body = dict(chat.body)
    body.pop("stream", None)
    body.pop("stream_options", None)
    return body


def _cache_store(
    state: State,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    completion: dict[str, Any],
) -> None:
    policy = d.policy
    if d.degraded is not None or d.cache != "miss":
        return
    if policy.exact is not None and d.exact_key is not None:
        policy.exact.put(
            d.exact_key,
            completion=completion,
            route=d.route,
            confidence=d.confidence,
        )
        if state.shared_cache is not None:
            state.shared_cache.put(
                d.exact_key,
                completion=completion,
                route=d.route,
                confidence=d.confidence,
                ttl_seconds=policy.exact.ttl_seconds,
            )
    if policy.semantic is not None:
        context, text = cache_mod.semantic_parts(policy=policy.name, body=_key_body(chat))
        policy.semantic.put(
            context=context,
            text=text,
            completion=completion,
            route=d.route,
            confidence=d.confidence,
        )
