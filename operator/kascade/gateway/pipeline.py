"""The request pipeline: privacy → cache → rules → local pass → confidence →
escalation → record. One function per step; `handle_chat` reads as the recipe."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from kascade.gateway import audit as audit_mod
from kascade.gateway import cache as cache_mod
from kascade.gateway import confidence as confidence_mod
from kascade.gateway import (
    errors,
    escalation,
    ledger,
    local,
    pressure,
    providers,
    request,
    rules,
    runtime,
    sse,
)
from kascade.gateway import metrics as metrics_mod

log = logging.getLogger("kascade.gateway")


def usd_text(nanos: int) -> str:
    """Nano-USD as a plain decimal string without trailing zeros ("0.002", "0")."""
    return format(ledger.nanos_to_usd(nanos).normalize(), "f")


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


@dataclass
class Decision:
    """What happened to one request; becomes headers, metrics and the audit line."""

    request_id: str
    policy: runtime.PolicyRuntime
    route: str = "local"
    reason: str = "confident"
    confidence: float | None = None
    threshold: float | None = None
    rule: int | None = None
    rule_name: str | None = None
    cache: str = "off"
    similarity: float | None = None
    cost_nanos: int = 0
    degraded: str | None = None
    outcome: escalation.Outcome | None = None
    pii: dict[str, int] = field(default_factory=dict)
    local_error: str | None = None
    exact_key: cache_mod.ExactKey | None = None

    def headers(self) -> dict[str, str]:
        h = {
            "x-kascade-request-id": self.request_id,
            "x-kascade-route": self.route,
            "x-kascade-reason": self.reason,
            "x-kascade-cost-usd": usd_text(self.cost_nanos),
        }
        if self.confidence is not None:
            h["x-kascade-confidence"] = f"{self.confidence:.4f}"
        if self.degraded is not None:
            # One line, ASCII only: the policy's message may hold any character.
            text = " ".join(self.degraded.split())[:500]
            h["x-kascade-degraded"] = text.encode("ascii", "replace").decode()
        return h


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
        _authenticate(rt, http)
        raw = await _read_body(http, limit=rt.config.limits.max_body_bytes)
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
    decision = Decision(request_id=request_id, policy=policy)
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
    _record(state, chat, decision, status=status, started=started)
    return response


def _authenticate(rt: runtime.Runtime, http: web.Request) -> None:
    if rt.api_keys is None:
        return
    header = http.headers.get("authorization", "")
    key = header[7:].strip() if header[:7].lower() == "bearer " else http.headers.get("api-key")
    if not key or key not in rt.api_keys:
        raise errors.ApiError(
            status=401,
            message="Missing or invalid API key: send `Authorization: Bearer <key>`.",
            type="authentication_error",
            code="invalid_api_key",
        )


async def _read_body(http: web.Request, *, limit: int) -> bytes:
    too_big = errors.ApiError(
        status=413,
        message=f"Request body is larger than the gateway's limit of {limit} bytes.",
        code="request_too_large",
    )
    length = http.content_length
    if length is not None:
        if length > limit:
            raise too_big
        return await http.read()
    chunks: list[bytes] = []
    total = 0
    async for chunk in http.content.iter_chunked(65536):
        total += len(chunk)
        if total > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _route(
    state: State,
    rt: runtime.Runtime,
    http: web.Request,
    chat: request.ChatRequest,
    d: Decision,
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
            elif cfg.privacy.action == "local-only":
                local_only = True
            else:
                raw_pii = True
    # 2. Cache.
    hit = _cache_lookup(state, chat, d)
    if hit is not None:
        return await _respond(http, chat, d, completion=hit)
    # 3. Rules.
    matched = rules.match(rules=cfg.rules, prompt_tokens=chat.prompt_estimate, headers=http.headers)
    pool = policy.pool
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
        elif rule.action == "expert":
            if rule.target is not None:
                experts = [state.experts[rule.target]]
            escalate_reason = "rule"
    if local_only:  # Personal data under local-only outranks every rule.
        experts = []
        escalate_reason = None
    # 4. Local pass (skipped when a rule sends the request straight to an expert).
    answer: local.LocalAnswer | None = None
    if escalate_reason is None:
        if chat.stream and not experts:
            d.reason = "local_only" if local_only else "no_escalation"
            return await _stream_local(state, http, chat, d, pool=pool)
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
            if escalate_reason is None or not experts:
                if escalate_reason is not None:
                    d.reason = "local_only" if local_only else "no_experts"
                _cache_store(chat, d, completion=answer.completion)
                return await _respond(http, chat, d, completion=answer.completion)
    assert escalate_reason is not None
    d.reason = escalate_reason
    if not experts:
        detail = f"local pool: {d.local_error or 'saturated'}; no expert may receive this request"
        raise _no_local_answer(d, detail=detail)
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
    d: Decision,
    *,
    pool: Any,
    can_escalate: bool,
) -> local.LocalAnswer:
    cfg = d.policy.config
    method = cfg.confidence.method
    deadline = time.monotonic() + cfg.overflow_wait_millis / 1000
    while True:
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


async def _escalate(
    state: State,
    http: web.Request,
    chat: request.ChatRequest,
    d: Decision,
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
    writer = _expert_stream_writer(http, d, streamed) if chat.stream else None
    outcome = await state.escalator.run(experts=ordered, call=call, stream_writer=writer)
    d.outcome = outcome
    d.cost_nanos = outcome.cost_nanos
    if outcome.expert is not None:
        d.route = f"expert:{outcome.expert}"
        state.metrics.observe_escalation(
            policy=d.policy.name, expert=outcome.expert, reason=d.reason
        )
        if streamed:
            return streamed[0]
        assert outcome.answer is not None
        _cache_store(chat, d, completion=outcome.answer.completion)
        return await _respond(
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
            raise _no_local_answer(d, detail=f"{summary}; local pool: {exc}") from None
        d.confidence = answer.confidence
    d.degraded = f"{cfg.fallback.message} ({summary})"
    return await _respond(http, chat, d, completion=answer.completion)


def _no_local_answer(d: Decision, *, detail: str) -> errors.ApiError:
    return errors.ApiError(
        status=503,
        message=f"Neither the local pool nor an expert could answer ({detail}).",
        type="server_error",
        code="no_answer",
    )


def _expert_stream_writer(
    http: web.Request, d: Decision, streamed: list[web.StreamResponse]
) -> escalation.StreamWriter:
    async def write(
        upstream: aiohttp.ClientResponse,
        translator: providers.StreamTranslator,
        start: escalation.StreamStart,
    ) -> tuple[int | None, int | None]:
        d.route = f"expert:{start.expert}"
        # The actual cost is known only at the end: the header carries the reserved
        # worst case, the audit line and metrics the settled cost.
        d.cost_nanos = start.worst_case_nanos
        response = web.StreamResponse(headers=_sse_headers(d))
        streamed.append(response)
        await response.prepare(http)
        async for line in upstream.content:
            out = translator.feed(line)
            if out is not None:
                await response.write(out)
        await response.write_eof()
        return translator.prompt_tokens, translator.completion_tokens

    return write


def _sse_headers(d: Decision) -> dict[str, str]:
    return {**d.headers(), "content-type": "text/event-stream", "cache-control": "no-cache"}


async def _stream_local(
    state: State, http: web.Request, chat: request.ChatRequest, d: Decision, *, pool: Any
) -> web.StreamResponse:
    try:
        async with local.open_stream(session=state.session, pool=pool, body=chat.body) as up:
            response = web.StreamResponse(headers=_sse_headers(d))
            await response.prepare(http)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except local.Overflow as overflow:
        raise errors.ApiError(
            status=429,
            message="The local model pool is saturated; retry later.",
            type="rate_limit_error",
            code="pool_saturated",
            headers={"retry-after": str(max(1, round(overflow.retry_after or 1)))},
        ) from None
    except local.LocalFailure as failure:
        raise _no_local_answer(d, detail=f"local pool: {failure.kind}") from None


async def _respond(
    http: web.Request,
    chat: request.ChatRequest,
    d: Decision,
    *,
    completion: dict[str, Any],
    raw: bytes | None = None,
) -> web.StreamResponse:
    if not chat.stream:
        return web.Response(
            body=raw if raw is not None else json.dumps(completion).encode(),
            content_type="application/json",
            headers=d.headers(),
        )
    response = web.StreamResponse(headers=_sse_headers(d))
    await response.prepare(http)
    for chunk in sse.chunks_from_completion(completion):
        await response.write(chunk)
    await response.write_eof()
    return response


def _cache_lookup(state: State, chat: request.ChatRequest, d: Decision) -> dict[str, Any] | None:
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


def _key_body(chat: request.ChatRequest) -> dict[str, Any]:
    body = dict(chat.body)
    body.pop("stream", None)
    body.pop("stream_options", None)
    return body


def _cache_store(chat: request.ChatRequest, d: Decision, *, completion: dict[str, Any]) -> None:
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
    if policy.semantic is not None:
        context, text = cache_mod.semantic_parts(policy=policy.name, body=_key_body(chat))
        policy.semantic.put(
            context=context,
            text=text,
            completion=completion,
            route=d.route,
            confidence=d.confidence,
        )


def _record(
    state: State, chat: request.ChatRequest, d: Decision, *, status: int, started: float
) -> None:
    elapsed = time.perf_counter() - started
    m = state.metrics
    route_label = d.route if not d.route.startswith("expert:") else "expert"
    m.observe_request(policy=d.policy.name, route=route_label, reason=d.reason, seconds=elapsed)
    if d.confidence is not None and d.cache in ("off", "miss"):
        m.confidence.labels(d.policy.name).observe(d.confidence)
    if not d.policy.config.audit.enabled or not state.audit.enabled:
        return
    outcome = d.outcome
    state.audit.write(
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
            "cost_usd": usd_text(d.cost_nanos),
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
