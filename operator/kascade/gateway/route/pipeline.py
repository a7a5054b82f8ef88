"""The request pipeline: privacy → cache → rules → local pass → confidence →
escalation → record. One function per step; `handle_chat` reads as the recipe."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from kascade.api import wire
from kascade.gateway import config as config_mod
from kascade.gateway import runtime
from kascade.gateway.cache import memory as cache_mod
from kascade.gateway.cache import shared as shared_cache_mod
from kascade.gateway.endpoints import errors, inbound, responses
from kascade.gateway.experts import capabilities, escalation
from kascade.gateway.observe import audit as audit_mod
from kascade.gateway.observe import metrics as metrics_mod
from kascade.gateway.observe import record
from kascade.gateway.privacy import screen as screen_mod
from kascade.gateway.route import (
    capability,
    combined_score,
    degeneration,
    formats,
    kept_answers,
    local,
    pressure,
    request,
    rules,
    score_fit,
    shadow,
    tiers,
    variants,
)
from kascade.gateway.route import confidence as confidence_mod
from kascade.gateway.route import decision as decision_mod
from kascade.gateway.tenants import access
from kascade.gateway.tenants import limits as tenant_limits

log = logging.getLogger("kascade.gateway")

PROMPT_TOO_LONG = "prompt_too_long"
"""Escalation reason: the prompt is longer than every local tier's maxPromptTokens."""


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
    quality: shadow.Quality = dataclasses.field(default_factory=shadow.Quality)
    """Learning state of policies with a quality target (labels, learned thresholds)."""


class _LocalRejected(Exception):
    def __init__(self, error: errors.ApiError) -> None:
        self.error = error


async def handle_chat(state: State, http: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions."""
    started = time.perf_counter()
    rt = state.runtime  # This request keeps this config even if a reload happens.
    request_id = os.urandom(16).hex()  # as unique as uuid4, a quarter of the cost
    ids = {wire.REQUEST_ID_HEADER: request_id}
    try:
        caller = inbound.identify(rt, http)
        raw = await inbound.read_body(http, limit=rt.config.limits.max_body_bytes)
        chat = request.parse(raw)
        policy = _resolve_policy(rt, caller, chat.model)
        policy = _assign_variant(policy, chat=chat, http=http, caller=caller, request_id=request_id)
    except errors.ApiError as exc:
        state.metrics.requests.labels("", "error", exc.code or "invalid_request").inc()
        state.metrics.http_responses.labels("", f"{exc.status // 100}xx").inc()
        return exc.response(extra_headers=ids)
    decision = decision_mod.Decision(request_id=request_id, policy=policy, caller=caller)
    status = 200
    try:
        async with tenant_limits.admitted(
            state.escalator.throttle, caller=caller, chat=chat, experts=policy.experts
        ):
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


def _resolve_policy(
    rt: runtime.Runtime, caller: access.Caller, model: str
) -> runtime.PolicyRuntime:
    policy = rt.policies.get(model)
    access.require_key(
        caller=caller,
        required=rt.keys_required,
        allow_anonymous=policy is not None and policy.config.allow_anonymous,
    )
    if policy is None:
        # Naming the gateway's other policies would tell any caller what exists.
        raise errors.ApiError(
            status=404,
            message=f"The model `{model}` does not exist: it must name a RoutingPolicy "
            "of this gateway that your key may call (GET /v1/models lists them).",
            param="model",
            code="model_not_found",
        )
    access.authorize(caller=caller, policy=model)
    return policy


def _assign_variant(
    policy: runtime.PolicyRuntime,
    *,
    chat: request.ChatRequest,
    http: web.Request,
    caller: access.Caller,
    request_id: str,
) -> runtime.PolicyRuntime:
    """The arm of the policy's A/B split that serves this caller (the policy itself
    when it has no variants)."""
    if not policy.variants:
        return policy
    who = variants.identity(body=chat.body, headers=http.headers, caller=caller)
    # Without an identity the request's random id places it: assigned per request.
    point = (
        variants.bucket(policy=policy.name, who=who)
        if who is not None
        else int(request_id[:16], 16) / float(1 << 64)
    )
    return variants.choose(policy.variants, point=point).policy


async def _route(
    state: State,
    rt: runtime.Runtime,
    http: web.Request,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
) -> web.StreamResponse:
    d.task = rules.task_label(rules=d.policy.config.rules, headers=http.headers)
    # 1. Privacy: every field that could leave the cluster.
    screened = await _privacy(state, chat, d)
    # 2. Cache.
    hit = await _cached(state, chat, d)
    if hit is not None:
        return await responses.respond(http, chat, d, completion=hit)
    # 3. Rules, then the local tier the prompt fits.
    pool, experts, escalate_reason = _candidates(state, rt, http, chat, d, screened=screened)
    # 4. Local pass (skipped when a rule sends the request straight to an expert).
    answer: local.LocalAnswer | None = None
    sampling = _Sampling()
    if escalate_reason is None:
        assert pool is not None  # no tier fits only with reason prompt_too_long
        if chat.stream and not experts:
            d.reason = "local_only" if screened.local_only else "no_escalation"
            return await responses.stream_local(state.session, http, chat, d, pool=pool)
        answer, escalate_reason = await _local_answer(state, chat, d, pool=pool, experts=experts)
        if answer is not None:
            # 5. Confidence check (the degeneration detector first: it overrides scores).
            escalate_reason, sampling = _judge(state, http, chat, d, answer=answer, experts=experts)
            if escalate_reason is None or not experts:
                return await _answer_locally(
                    state, http, chat, d, answer=answer, escalate_reason=escalate_reason,
                    experts=experts, screened=screened, sampling=sampling,
                )  # fmt: skip
    assert escalate_reason is not None
    d.reason = escalate_reason
    if not experts:
        raise _no_answer(chat, d, pool=pool)
    # 6. Escalation.
    response = await _escalate(
        state,
        http,
        chat,
        d,
        experts=experts,
        outbound=screened.messages,
        outbound_params=screened.params,
        raw_pii=screened.raw_pii,
        answer=answer,
        pool=pool,
    )
    if answer is not None:
        _label_from_expert(state, d, answer=answer, sampling=sampling)
    return response


async def _cached(
    state: State, chat: request.ChatRequest, d: decision_mod.Decision
) -> dict[str, Any] | None:
    """A cached completion: this replica's cache first, then the shared exact cache."""
    hit = _cache_lookup(state, chat, d)
    if hit is None and d.exact_key is not None and state.shared_cache is not None:
        hit = await _shared_lookup(state, d)
    return hit


def _candidates(
    state: State,
    rt: runtime.Runtime,
    http: web.Request,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    screened: screen_mod.Screened,
) -> tuple[config_mod.PoolConfig | None, list[escalation.ExpertState], str | None]:
    """The local pool, the experts that may receive the request, and a reason to skip
    the local pass (None to try it)."""
    pool, experts, escalate_reason = _rules_and_tier(state, rt, http, chat, d)
    if screened.local_only:  # Personal data under local-only outranks every rule.
        experts = []
        escalate_reason = None if pool is not None else PROMPT_TOO_LONG
    experts = capability.capable(experts=experts, chat=chat)
    return pool, experts, escalate_reason


def _no_answer(
    chat: request.ChatRequest, d: decision_mod.Decision, *, pool: config_mod.PoolConfig | None
) -> errors.ApiError:
    """The error when the local pass gave no answer and no expert may take over."""
    local_why = (
        _too_long(chat, d) if pool is None else f"local pool: {d.local_error or 'saturated'}"
    )
    return responses.no_local_answer(d, detail=f"{local_why}; no expert may receive this request")


@dataclass(frozen=True)
class _Sampling:
    """The policy's quality target for this request: its learning state (None without a
    target), the request's task, and whether the request was drawn for a label."""

    quality: shadow.PolicyQuality | None = None
    task: str | None = None
    drawn: bool = False
    values: dict[str, float] | None = None
    """The answer's feature vector (combined score), for an arm that fits its score."""
    labellable: bool = False
    """A label of this answer can be used: it has a score (and, for an arm that fits
    its score, a feature vector). Shadow draws and ratings both need it."""


async def _local_answer(
    state: State,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    pool: Any,
    experts: list[escalation.ExpertState],
) -> tuple[local.LocalAnswer | None, str | None]:
    """The pool's answer, or why there is none (the escalation reason)."""
    try:
        answer = await _local_pass(state, chat, d, pool=pool, can_escalate=bool(experts))
    except _LocalRejected as rejected:
        raise rejected.error from None
    except local.Overflow:
        return None, "overflow"
    except local.LocalFailure as failure:
        d.local_error = failure.kind
        return None, "local_error"
    return answer, None


def _judge(
    state: State,
    http: web.Request,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    answer: local.LocalAnswer,
    experts: list[escalation.ExpertState],
) -> tuple[str | None, _Sampling]:
    """Scores the local answer against the (pressure-moved, tenant-offset or learned)
    threshold; returns the escalation reason (None keeps it local)."""
    cfg = d.policy.config
    quality, task = _quality(state, d, http)
    fitter = quality.fitter if quality else None
    d.confidence, values = _score(chat, d, answer=answer, http=http, fitter=fitter)
    burn, unavailable = state.pressure.inputs(experts=experts)
    d.threshold = tenant_limits.offset_threshold(
        confidence_mod.threshold(
            confidence=cfg.confidence, burn=burn, unavailable_fraction=unavailable
        ),
        caller=d.caller,
    )
    learned = quality.calibrator.threshold(task=task) if quality else None
    if learned is not None:
        d.threshold, d.threshold_learned = learned, True
    # An arm that fits its score labels only answers with a feature vector.
    labellable = d.confidence is not None and (fitter is None or values is not None)
    drawn = quality is not None and labellable and quality.budget.sample()
    reason: str | None = None
    if d.degeneration is not None:
        reason = "degenerate"
    elif d.confidence is None:
        d.reason = "confidence_unavailable"
    elif d.confidence >= d.threshold:
        d.reason = "confident"
    else:
        reason = "low_confidence"
    d.format_problem = formats.problem(chat=chat, completion=answer.completion)
    if d.format_problem is not None:
        reason = "invalid_format"
    return reason, _Sampling(
        quality=quality, task=task, drawn=drawn, values=values, labellable=labellable
    )


async def _answer_locally(
    state: State,
    http: web.Request,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    answer: local.LocalAnswer,
    escalate_reason: str | None,
    experts: list[escalation.ExpertState],
    screened: screen_mod.Screened,
    sampling: _Sampling,
) -> web.StreamResponse:
    """Returns the local answer (kept, or no expert may take it); a drawn request also
    starts a shadow call for a label."""
    if escalate_reason is not None:
        d.reason = "local_only" if screened.local_only else "no_experts"
    if sampling.drawn and sampling.quality is not None and experts:
        # A shadow call calibrates the policy: the expert's budget pays it, not the
        # caller's tenant.
        call = _call(
            chat, d, outbound=screened.messages, params=screened.params,
            raw_pii=screened.raw_pii, tenant_pays=False,
        )  # fmt: skip
        _start_shadow(state, d, sampling, answer=answer, expert=experts[0], call=call)
    await _remember_for_rating(state, http, d, sampling)
    _cache_store(state, chat, d, completion=answer.completion)
    return await responses.respond(http, chat, d, completion=answer.completion)


async def _remember_for_rating(
    state: State, http: web.Request, d: decision_mod.Decision, sampling: _Sampling
) -> None:
    """Keeps what a user's rating needs to label this returned local answer, for a
    target that takes ratings (``feedbackLabels``); only a scored answer an expert
    could label too (an arm that fits its score also needs the feature vector).
    Awaited before the answer returns: a rating may reach another replica at once."""
    quality = sampling.quality
    if quality is None or not quality.target.feedback_labels or not sampling.labellable:
        return
    assert d.confidence is not None  # labellable
    kept = kept_answers.Kept(
        policy=quality.policy,
        variant=quality.variant,
        arm=quality.identity,
        task=sampling.task,
        score=d.confidence,
        values=sampling.values,
        caller=kept_answers.caller_identity(d.caller, access.presented_key(http.headers)),
    )
    await state.quality.kept.remember(d.request_id, kept)


def _label_from_expert(
    state: State, d: decision_mod.Decision, *, answer: local.LocalAnswer, sampling: _Sampling
) -> None:
    """A free label: a drawn request escalated anyway, so the expert already answered."""
    if not sampling.drawn or sampling.quality is None or d.confidence is None:
        return
    expert_answer = d.outcome.answer if d.outcome is not None else None
    if expert_answer is None:
        return
    labelling = shadow.label(
        quality=sampling.quality,
        task=sampling.task,
        score=d.confidence,
        local_text=answer.text(),
        expert_text=shadow.completion_text(expert_answer.completion),
        metrics=state.metrics,
        audit=state.audit,
        values=sampling.values,
        request_id=d.request_id,
    )
    # Off the response path: an arm that takes ratings claims the request in the kept
    # answers' store first (Redis, with replicas) before the label counts.
    job = asyncio.get_running_loop().create_task(labelling)
    state.quality.tasks.add(job)
    job.add_done_callback(state.quality.tasks.discard)


def _rules_and_tier(
    state: State,
    rt: runtime.Runtime,
    http: web.Request,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
) -> tuple[config_mod.PoolConfig | None, list[escalation.ExpertState], str | None]:
    """(pool of the local pass, experts that may answer, why the local pass is skipped).

    The pool is None when the prompt is longer than every tier takes: the request then
    skips the local pass with reason ``prompt_too_long`` (or a rule's reason).
    """
    policy = d.policy
    matched = rules.match(
        rules=policy.config.rules,
        prompt_tokens=chat.prompt_estimate,
        headers=http.headers,
        has_tools=bool(chat.tools),
        response_format=chat.response_format,
    )
    tier = tiers.first_fitting(policy.tiers, prompt_tokens=chat.prompt_estimate)
    # Too long for every tier: metrics count it against the largest (last) tier.
    d.pool = (tier or policy.tiers[-1]).name
    pool = tier.pool if tier is not None else None
    experts = policy.experts
    escalate_reason = None if tier is not None else PROMPT_TOO_LONG
    if matched is not None:
        d.rule, rule = matched
        d.rule_name = rule.name
        if rule.action == "local":
            experts = []
        elif rule.action == "tier":
            # The rule names its tier outright, whatever the tiers' prompt limits.
            assert rule.target is not None
            pool, d.pool, escalate_reason = rt.config.pools[rule.target], rule.target, None
        elif rule.action == "expert":
            if rule.target is not None:
                experts = [state.experts[rule.target]]
            escalate_reason = "rule"
    return pool, experts, escalate_reason


def _too_long(chat: request.ChatRequest, d: decision_mod.Decision) -> str:
    largest = tiers.largest_limit(d.policy.tiers)
    return (
        f"the prompt (about {chat.prompt_estimate} tokens) is longer than every local tier "
        f"takes (the largest maxPromptTokens is {largest})"
    )


def _quality(
    state: State, d: decision_mod.Decision, http: web.Request
) -> tuple[shadow.PolicyQuality | None, str | None]:
    """The learning state of the request's arm (the policy, or its variant: each arm
    learns on its own scores) or None without a target, and the request's task when
    the target names it (so metric labels stay a bounded set)."""
    arm = _learning_arm(state, d.policy)
    if arm is None:
        return None, None
    task = http.headers.get(rules.TASK_HEADER)
    return arm, (task if task in arm.target.tasks else None)


def _learning_arm(state: State, policy: runtime.PolicyRuntime) -> shadow.PolicyQuality | None:
    """The learning state of the arm ``policy`` serves, or None without a target."""
    target = policy.config.confidence.target
    if target is None:
        return None
    return state.quality.policy(
        name=policy.name,
        variant=policy.variant,
        target=target,
        combined=policy.config.confidence.method == "combined",
    )


def serving_arm(state: State, policy: str, variant: str | None) -> shadow.PolicyQuality | None:
    """The learning state of arm (``policy``, ``variant``) in the running config, made
    if this replica has not served it yet (a rating may reach any replica); None when
    the config has no such arm."""
    served = state.runtime.policies.get(policy)
    if served is None or (variant is None) != (not served.variants):
        return None
    if variant is not None:
        served = next((v.policy for v in served.variants if v.name == variant), None)
    return _learning_arm(state, served) if served is not None else None


def _call(
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    outbound: list[dict[str, Any]],
    params: dict[str, Any],
    raw_pii: bool,
    tenant_pays: bool = True,
) -> escalation.Call:
    """The escalation of the screened request (messages and parameters)."""
    return escalation.Call(
        request_id=d.request_id,
        messages=outbound,
        params=params,
        requested_max_tokens=chat.max_tokens,
        prompt_bound=chat.prompt_bound,
        prompt_estimate=chat.prompt_estimate,
        raw_personal_data=raw_pii,
        max_cost_nanos=d.policy.max_cost_nanos,
        needs=capabilities.required(chat.body),
        also_books=tenant_limits.books(d.caller) if tenant_pays else (),
        answer_problem=_format_check(chat),
    )


def _format_check(chat: request.ChatRequest) -> Callable[[dict[str, Any]], str | None] | None:
    """An expert's answer is held to the request's response_format as a local one is:
    a provider may ignore it (an OpenAI-compatible server) or not enforce the schema
    (Anthropic's forced tool)."""
    if chat.response_format not in ("json_object", "json_schema"):
        return None
    return lambda completion: formats.problem(chat=chat, completion=completion)


def _start_shadow(
    state: State,
    d: decision_mod.Decision,
    sampling: _Sampling,
    *,
    answer: local.LocalAnswer,
    expert: escalation.ExpertState,
    call: escalation.Call,
) -> None:
    assert d.confidence is not None
    assert sampling.quality is not None
    job = asyncio.get_running_loop().create_task(
        shadow.shadow_call(
            quality=sampling.quality,
            escalator=state.escalator,
            expert=expert,
            call=call,
            task=sampling.task,
            score=d.confidence,
            local_text=answer.text(),
            metrics=state.metrics,
            audit=state.audit,
            values=sampling.values,
        )
    )
    state.quality.tasks.add(job)
    job.add_done_callback(state.quality.tasks.discard)


def _score(
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    answer: local.LocalAnswer,
    http: web.Request,
    fitter: score_fit.ScoreFitter | None = None,
) -> tuple[float | None, dict[str, float] | None]:
    """The answer's confidence per the policy's method, and its feature vector (method
    combined); sets ``d.degeneration`` when the detector flags the answer."""
    conf = d.policy.config.confidence
    text = degeneration.detect(
        answer=answer.text(),
        prompt=degeneration.prompt_text(chat.messages),
        finish_reason=answer.finish_reason(),
    )
    if conf.degeneration.enabled and not answer.calls_tools():
        d.degeneration = degeneration.verdict(
            features=text,
            limits=degeneration.Limits(
                max_repetition=conf.degeneration.max_repetition,
                max_prompt_echo=conf.degeneration.max_prompt_echo,
                escalate_cut_off=conf.degeneration.escalate_cut_off,
            ),
        )
    if conf.method != "combined":
        return answer.confidence, None
    signals = answer.signals or {}
    values = combined_score.features(
        signals=signals, text=text, task=http.headers.get(rules.TASK_HEADER)
    )
    if values is None:
        return None, None
    if fitter is not None and fitter.model is not None:
        return fitter.model.score(values), values
    if conf.combined is not None:
        weights, intercept = conf.combined.weights, conf.combined.intercept
        return combined_score.score(values=values, weights=weights, intercept=intercept), values
    # fitScore without starting weights: the pool's mean token probability until a fit.
    return min(max(float(signals["mean_token_prob"]), 0.0), 1.0), values


async def _privacy(
    state: State, chat: request.ChatRequest, d: decision_mod.Decision
) -> screen_mod.Screened:
    policy = d.policy
    cfg = policy.config
    if not policy.scanner.enabled:
        if cfg.audit.include_prompts:
            d.prompt = chat.messages  # no detector configured: nothing to redact with
        return screen_mod.Screened(messages=chat.messages, params=chat.params, counts={})
    scanned = await screen_mod.scan(
        policy.scanner, messages=chat.messages, params=chat.params, size=chat.body_bytes
    )
    screened = screen_mod.decide(
        cfg.privacy, scanned, messages=chat.messages, params=chat.params,
        has_experts=bool(policy.experts),
    )  # fmt: skip
    d.pii = screened.counts
    if cfg.audit.include_prompts:  # always the redacted text, whatever the action
        d.prompt = screen_mod.audit_prompt(scanned, messages=chat.messages)
    if screened.done is not None:
        kinds = sorted(kind for kind, count in screened.counts.items() if count)
        d.privacy = f"{screened.done}:{','.join(kinds)}"
        for kind in kinds:
            state.metrics.privacy_detections.labels(policy.name, kind, screened.done).inc()
    return screened


async def _local_pass(
    state: State,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    pool: config_mod.PoolConfig,
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
    outbound_params: dict[str, Any],
    raw_pii: bool,
    answer: local.LocalAnswer | None,
    pool: config_mod.PoolConfig | None,
) -> web.StreamResponse:
    cfg = d.policy.config
    call = _call(chat, d, outbound=outbound, params=outbound_params, raw_pii=raw_pii)
    ordered = state.escalator.order(experts=experts, selection=cfg.selection, call=call)
    streamed: list[web.StreamResponse] = []
    writer = responses.expert_stream_writer(http, d, streamed) if chat.stream else None
    # Reservation, call and settlement (shielded from cancellation) all happen in run().
    outcome = await state.escalator.run(experts=ordered, call=call, stream_writer=writer)
    _record_escalation(state, d, outcome)
    if outcome.expert is not None:
        return await _expert_answer(state, http, chat, d, outcome=outcome, streamed=streamed)
    if streamed:  # The stream broke after it started: nothing else can be sent.
        return streamed[0]
    # 7. Fallback: no expert answered.
    return await _fallback(state, http, chat, d, outcome=outcome, answer=answer, pool=pool)


def _record_escalation(state: State, d: decision_mod.Decision, outcome: escalation.Outcome) -> None:
    """The settled outcome on the decision, and its cost against the pool."""
    d.outcome = outcome
    d.cost_nanos = outcome.cost_nanos
    state.metrics.observe_pool_escalation(
        pool=d.pool, reason=d.reason, usd=outcome.cost_nanos / 1_000_000_000
    )


async def _expert_answer(
    state: State,
    http: web.Request,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    outcome: escalation.Outcome,
    streamed: list[web.StreamResponse],
) -> web.StreamResponse:
    """The answering expert's response (already streamed, or cached and sent now)."""
    assert outcome.expert is not None
    d.route = f"expert:{outcome.expert}"
    state.metrics.observe_escalation(policy=d.policy.name, expert=outcome.expert, reason=d.reason)
    if streamed:
        return streamed[0]
    assert outcome.answer is not None
    _cache_store(state, chat, d, completion=outcome.answer.completion)
    return await responses.respond(
        http, chat, d, completion=outcome.answer.completion, raw=outcome.answer.raw
    )


async def _fallback(
    state: State,
    http: web.Request,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    outcome: escalation.Outcome,
    answer: local.LocalAnswer | None,
    pool: config_mod.PoolConfig | None,
) -> web.StreamResponse:
    """No expert answered: an error when the policy or a budget says so, else the local
    answer (asked for now when the request skipped the local pass), marked degraded."""
    cfg = d.policy.config
    summary = outcome.failure_summary
    if outcome.ledger_unavailable:
        summary = "the budget ledger is unreachable, so escalation failed closed; " + summary
    _raise_if_refused(d, outcome, summary=summary)
    if answer is None:
        answer = await _fallback_local(state, chat, d, pool=pool, summary=summary)
    d.degraded = f"{cfg.fallback.message} ({summary})"
    return await responses.respond(http, chat, d, completion=answer.completion)


def _raise_if_refused(
    d: decision_mod.Decision, outcome: escalation.Outcome, *, summary: str
) -> None:
    """Raises when a tenant budget, an expert budget or the policy refuses a fallback."""
    cfg = d.policy.config
    tenant = d.caller.tenant
    if outcome.tenant_budget_exhausted and tenant is not None:
        tenant_limits.raise_if_rejecting(tenant, summary=summary)
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


async def _fallback_local(
    state: State,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    pool: config_mod.PoolConfig | None,
    summary: str,
) -> local.LocalAnswer:
    """A local answer for a request that skipped the local pass."""
    if pool is None:  # no local tier takes a prompt this long
        raise responses.no_local_answer(d, detail=f"{summary}; {_too_long(chat, d)}")
    try:
        answer = await local.complete(
            session=state.session,
            pool=pool,
            body=chat.body,
            method=d.policy.config.confidence.method,
        )
    except (local.Overflow, local.LocalFailure) as exc:
        raise responses.no_local_answer(d, detail=f"{summary}; local pool: {exc}") from None
    d.confidence = answer.confidence
    return answer


def _cache_lookup(
    state: State, chat: request.ChatRequest, d: decision_mod.Decision
) -> dict[str, Any] | None:
    policy = d.policy
    if policy.exact is None and policy.semantic is None:
        return None
    d.cache = "miss"
    if policy.exact is not None:
        d.exact_key = cache_mod.exact_key(policy=_partition(d), body=chat.body)
        entry = policy.exact.get(d.exact_key)
        if entry is not None:
            d.cache, d.route, d.reason = "exact", "cache", "cache_exact"
            d.confidence = entry.confidence
            state.metrics.cache_hits.labels("exact").inc()
            return entry.completion
    if policy.semantic is not None:
        context, text = cache_mod.semantic_parts(policy=_partition(d), body=_key_body(chat))
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


def _partition(d: decision_mod.Decision) -> str:
    """The cache partition: one per tenant unless the policy shares answers across them."""
    # An A/B arm has its own partition: an answer kept by one arm's threshold is not
    # served to callers of another.
    name = d.policy.name if d.policy.variant is None else f"{d.policy.name}\x01{d.policy.variant}"
    if d.policy.config.cache.shared_across_tenants:
        return name
    return f"{name}\x00{d.caller.label}"


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
        context, text = cache_mod.semantic_parts(policy=_partition(d), body=_key_body(chat))
        policy.semantic.put(
            context=context,
            text=text,
            completion=completion,
            route=d.route,
            confidence=d.confidence,
        )
