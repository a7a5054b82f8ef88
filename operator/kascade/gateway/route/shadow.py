"""Labels for a declared quality target: sampling, shadow calls, the learned threshold.

For a policy with ``confidence.target`` (see ``calibration`` for the method and its
guarantee), each request whose local answer was scored is drawn into the labelled
sample with probability ``shadowFraction``, whatever its route:

- drawn and escalated: the expert's answer labels the local one, at no extra cost;
- drawn and kept local: a background *shadow* call asks the policy's first expert
  (through the escalator: reserve, throttle, call, settle, so the expert's budget and
  the billing rule hold), within ``maxShadowBudgetShare`` of that expert's budget
  limit per budget window; the caller never waits for it.

A label is ``answer_match.agree(local, expert)``. A target with ``feedbackLabels``
also takes users' ratings of kept local answers as labels (``label_from_rating``;
memory and bounds: ``kept_answers``); each request gets at most one label, the first
of the expert's and its rating. Every change of a learned threshold
is a log line and an audit line (``type: threshold``) and moves the
``kascade_learned_threshold`` gauge. Learning state is per gateway replica (each
replica learns from its own traffic) and starts again when the target changes; the
shadow spend is the ledger's (below).

A/B variants: each arm of a policy (``spec.variants``) learns on its own labels, so an
arm's threshold rests only on scores of its own method and local pool (two scales
pooled in one calibrator would give a threshold that holds the target for neither
arm). The arms share one shadow spend per expert: the promise is per policy ("shadow
calls never spend more than ``maxShadowBudgetShare`` of the expert's budget"), and a
calibrator per arm with a budget per arm would let N arms spend N shares. The spend
outlives a changed target (a new target must not buy a fresh share).

Shadow spend is kept in the gateway's own ledger, in a book per (policy, expert)
(``shadow/<policy>/<expert>``) whose limit is the share of the expert's limit in the
expert's window and time zone. So the share is per budget window, as the budget is
(a share used up today frees up at the budget's next midnight, or as rolling spend
ages past 24 h, so labels and the learned threshold keep following traffic); held
worst cases count until settled; a call is charged to its window exactly as the
ledger charges the expert; and with the Redis ledger the count is one for all gateway
replicas and survives restarts (the in-memory ledger: one replica, checkpointed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import random
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from kascade.gateway import config as config_mod
from kascade.gateway import ledger
from kascade.gateway.experts import escalation
from kascade.gateway.observe import audit as audit_mod
from kascade.gateway.observe import metrics as metrics_mod
from kascade.gateway.route import answer_match, calibration, kept_answers, score_fit

__all__ = ["BOOK_PREFIX", "PolicyQuality", "Quality", "ShadowBudget"]

log = logging.getLogger("kascade.gateway")

Arm = tuple[str, str | None]
"""(policy, variant): the unit that learns (variant None for a policy without any)."""

BOOK_PREFIX = "shadow/"
"""Ledger books of shadow spend; `/` never occurs in an expert (Kubernetes object) name,
and tenants' books start with ``tenant/``."""


class ShadowBudget:
    """Which requests get a shadow call, and the cap on what shadow calls may spend.

    ``sample`` draws each request with probability ``fraction`` (uniform, so labels are
    an unbiased sample). ``admit`` reserves a shadow call's worst case in the policy's
    shadow book of the expert (see the module docstring) only when the shadow spend of
    the current window plus what is held plus this worst case stays within ``share``
    of the expert's budget limit; ``settle`` replaces it with the actual cost. Budgets
    of one ``policy`` (its A/B arms) write the same book, so they share one cap.
    """

    def __init__(
        self,
        *,
        fraction: float,
        share: float,
        policy: str,
        rng: Callable[[], float] | None = None,
    ) -> None:
        self._fraction = fraction
        self._share = share
        self._policy = policy
        self._rng = rng or random.Random().random

    def sample(self) -> bool:
        """Whether this request is in the labelled sample."""
        return self._rng() < self._fraction

    def book(self, *, expert: str, budget: ledger.Budget) -> ledger.Book:
        """The policy's shadow book of ``expert``: the share of its limit, per its window."""
        name = f"{BOOK_PREFIX}{self._policy}/{expert}"
        cap = int(self._share * budget.limit_nanos)  # spend <= share * limit, in integers
        shadow = dataclasses.replace(budget, limit_nanos=cap)
        try:
            return ledger.Book(name=name, budget=shadow)
        except ValueError:  # too long for a ledger key (or odd characters): use a digest
            digest = hashlib.sha256(name.encode()).hexdigest()
            return ledger.Book(name=BOOK_PREFIX + digest, budget=shadow)

    async def admit(
        self,
        *,
        ledger_backend: ledger.Ledger,
        expert: str,
        budget: ledger.Budget,
        worst_nanos: int,
        request_id: str,
    ) -> ledger.Reservation | None:
        """Reserves ``worst_nanos`` of the share, or None when the share cannot hold it;
        raises ``LedgerUnavailable`` when the ledger is down."""
        book = self.book(expert=expert, budget=budget)
        if worst_nanos > book.budget.limit_nanos:
            return None  # refused without asking (and above the ledger's maximum)
        try:
            return await ledger_backend.reserve(
                expert=book.name,
                budget=book.budget,
                amount_nanos=worst_nanos,
                request_id=request_id,
            )
        except ledger.BudgetExhausted:
            return None

    async def settle(
        self, *, ledger_backend: ledger.Ledger, reservation: ledger.Reservation, actual_nanos: int
    ) -> None:
        """Replaces a reservation made by ``admit`` with the actual cost (charged to the
        window it was admitted in, as the ledger charges the expert)."""
        await ledger_backend.settle(reservation, actual_nanos=actual_nanos)

    async def spent(
        self, *, ledger_backend: ledger.Ledger, expert: str, budget: ledger.Budget
    ) -> int:
        """Nano-USD shadow calls to ``expert`` cost in its current window (all arms)."""
        book = self.book(expert=expert, budget=budget)
        snap = await ledger_backend.snapshot(expert=book.name, budget=book.budget)
        return snap.spent_nanos


@dataclasses.dataclass
class PolicyQuality:
    """One arm's calibrator and shadow budget, for one target config."""

    target: config_mod.TargetConfig
    calibrator: calibration.Calibrator
    budget: ShadowBudget
    policy: str
    variant: str | None
    """The A/B arm (None for a policy without variants)."""
    fitter: score_fit.ScoreFitter | None = None
    """The arm's fitted combined score (``target.fitScore`` on a combined arm), else None."""
    tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    """Where a refit running off the event loop is held (the gateway's shadow tasks)."""
    kept: kept_answers.KeptStore | None = None
    """The gateway's kept answers, so an expert's label and a rating never both label
    one request (None: no memory, every expert label counts)."""
    identity: str = ""
    """``kept_answers.arm_identity``: a rating labels only answers kept by this arm."""
    feedback_labels: int = 0
    """Labels this arm got from user ratings (since its target was last set)."""


class Quality:
    """Every arm's learning state, kept across config reloads while targets hold."""

    def __init__(
        self,
        *,
        rng: Callable[[], float] | None = None,
        kept: kept_answers.KeptStore | None = None,
    ) -> None:
        self._rng = rng
        self._arms: dict[Arm, PolicyQuality] = {}
        self.kept: kept_answers.KeptStore = kept if kept is not None else kept_answers.KeptAnswers()
        """Local answers a rating may label (policies with ``feedbackLabels``)."""
        self.tasks: set[asyncio.Task[None]] = set()
        """Shadow calls in flight (held so they are not garbage-collected mid-call)."""

    def policy(
        self,
        *,
        name: str,
        target: config_mod.TargetConfig,
        variant: str | None = None,
        combined: bool = False,
    ) -> PolicyQuality:
        """The state of the arm (``name``, ``variant``); new when the target is new or
        changed (the policy's shadow spend carries over: it is in the ledger).
        ``combined``: the arm scores with the combined score (it may fit it)."""
        found = self._arms.get((name, variant))
        fits = target.fit_score and combined
        if found is None or found.target != target or (found.fitter is not None) != fits:
            found = self._arms[(name, variant)] = PolicyQuality(
                target=target,
                calibrator=calibration.Calibrator(
                    max_error=target.max_local_error_rate,
                    delta=1.0 - target.confidence_level,
                    window=target.window_labels,
                    min_labels=target.min_labels,
                ),
                budget=ShadowBudget(
                    fraction=target.shadow_fraction,
                    share=target.max_shadow_budget_share,
                    policy=name,
                    rng=self._rng,
                ),
                policy=name,
                variant=variant,
                fitter=score_fit.ScoreFitter(
                    window=target.window_labels, min_labels=target.min_labels, tasks=target.tasks
                )
                if fits
                else None,
                tasks=self.tasks,
                kept=self.kept,
                identity=kept_answers.arm_identity(target, fits=fits),
            )
        return found

    def arm(self, policy: str, variant: str | None) -> PolicyQuality | None:
        """The arm's state, if this replica has served it."""
        return self._arms.get((policy, variant))

    def status(self, *, serving: Collection[Arm] | None = None) -> dict[str, Any]:
        """Per policy: the target, labels and learned thresholds (for the status
        endpoint); a policy with variants has them per arm under ``variants``. Only the
        arms in ``serving`` (all when None): an arm renamed away keeps no entry."""
        out: dict[str, Any] = {}
        for (name, variant), q in sorted(self._arms.items(), key=lambda kv: _order(kv[0])):
            if serving is not None and (name, variant) not in serving:
                continue
            figures: dict[str, Any] = {
                "maxLocalErrorRate": q.target.max_local_error_rate,
                "confidenceLevel": q.target.confidence_level,
                "tasks": q.calibrator.status(),
            }
            if q.fitter is not None:
                figures["fittedScore"] = q.fitter.status()
            if q.target.feedback_labels:
                figures["feedbackLabels"] = q.feedback_labels
            entry = out.setdefault(name, {})
            if variant is None:
                entry.update(figures)
            else:
                entry.setdefault("variants", {})[variant] = figures
        return out

    async def close(self) -> None:
        """Cancels shadow calls still in flight; closes the kept answers' store."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.kept.close()


def _order(arm: Arm) -> tuple[str, str]:
    return arm[0], arm[1] or ""


async def label(
    *,
    quality: PolicyQuality,
    task: str | None,
    score: float,
    local_text: str,
    expert_text: str,
    metrics: metrics_mod.Metrics,
    audit: audit_mod.AuditLog,
    values: Mapping[str, float] | None = None,
    request_id: str = "",
) -> None:
    """Labels the local answer by the expert's. For an arm that takes ratings, only
    when no rating labelled the request first (one label per request, across replicas
    with a shared store); with the store unreachable the label is dropped: a claim that
    timed out may have been taken, and a label lost at random leaves the sample
    uniform, a double one does not."""
    if quality.target.feedback_labels and quality.kept is not None:
        try:
            if not await quality.kept.claim(request_id):
                return
        except kept_answers.StoreUnavailable:
            log.warning("Label dropped: kept answers' store unavailable policy=%s", quality.policy)
            return
    right = answer_match.agree(answer=local_text, reference=expert_text)
    add_label(
        quality=quality, task=task, score=score, right=right, metrics=metrics, audit=audit,
        values=values, request_id=request_id,
    )  # fmt: skip


def add_label(
    *,
    quality: PolicyQuality,
    task: str | None,
    score: float,
    right: bool,
    metrics: metrics_mod.Metrics,
    audit: audit_mod.AuditLog,
    values: Mapping[str, float] | None = None,
    request_id: str = "",
) -> None:
    """Adds one label to the arm; reports every threshold it moves. An arm that fits
    its score (see ``score_fit``) sends a FIT label to its fitter (a refit when due)
    and a CALIBRATE label, scored by the model in force, to its calibrator."""
    fitter = quality.fitter
    if fitter is None:
        changes = quality.calibrator.add(score=score, right=right, task=task)
    elif values is None:
        return  # not drawn without a vector (pipeline); nothing to fit or rescore it by
    elif score_fit.for_fitting(request_id):
        if fitter.add(values, right=right):
            _start_refit(quality, metrics=metrics, audit=audit)
        changes = []
    else:
        kept = fitter.bounded(values)
        now = fitter.model.score(kept) if fitter.model is not None else score
        changes = quality.calibrator.add(score=now, right=right, task=task, values=kept)
    _report(quality, changes, metrics=metrics, audit=audit)


async def label_from_rating(
    *,
    quality: Quality,
    request_id: str,
    rating: str,
    caller: str,
    metrics: metrics_mod.Metrics,
    audit: audit_mod.AuditLog,
    policy: str | None = None,
    arm_for: Callable[[str, str | None], PolicyQuality | None] | None = None,
) -> tuple[PolicyQuality | None, str | None]:
    """Labels a kept local answer by its user's rating (positive right, negative
    wrong): the arm labelled, or None and why not. Another caller's request, or one
    of another policy than the rating names, reads as unknown, so a rating cannot
    probe which request ids exist (nor which policy answered them). ``arm_for``: the
    arm (policy, variant) of the running config, so a replica that has not served it
    yet labels it too (default: the arms this replica has served). An arm whose target
    or scoring changed since the answer was kept reads as unknown: the answer was
    judged for the old one."""
    right = kept_answers.rating_label(rating)
    if right is None:
        return None, "neutral"
    try:
        found = await quality.kept.find(request_id)
        arm = (arm_for or quality.arm)(found.policy, found.variant) if found else None
        if (
            found is None
            or arm is None
            or arm.identity != found.arm
            or found.caller != caller
            or (policy is not None and found.policy != policy)
        ):
            return None, "unknown"
        if not await quality.kept.claim(request_id):
            return None, "already_labelled"
    except kept_answers.StoreUnavailable:
        return None, "unavailable"
    arm.feedback_labels += 1
    shown = "right" if right else "wrong"
    metrics.feedback_labels.labels(arm.policy, arm.variant or "", shown).inc()
    add_label(
        quality=arm, task=found.task, score=found.score, right=right, metrics=metrics,
        audit=audit, values=found.values, request_id=request_id,
    )  # fmt: skip
    return arm, None


def _report(
    quality: PolicyQuality,
    changes: list[tuple[str, calibration.Learned]],
    *,
    metrics: metrics_mod.Metrics,
    audit: audit_mod.AuditLog,
) -> None:
    """A log line, an audit line and the gauges for each moved threshold; label counts."""
    policy, variant = quality.policy, quality.variant or ""
    for key, learned in changes:
        shown = key or "*"
        log.info(
            "Learned threshold changed policy=%s variant=%s task=%s threshold=%.2f labels=%d "
            "error_estimate=%.4f error_upper_bound=%.4f",
            policy,
            variant or "-",
            shown,
            learned.threshold,
            learned.labels,
            learned.local_error_estimate,
            learned.upper_bound,
        )
        audit.write(
            {
                "type": "threshold",
                "policy": policy,
                "variant": quality.variant,  # null without variants, as on request lines
                "task": shown,
                "threshold": learned.threshold,
                "labels": learned.labels,
                "local_error_estimate": round(learned.local_error_estimate, 6),
                "local_error_upper_bound": round(learned.upper_bound, 6),
                "max_local_error_rate": quality.target.max_local_error_rate,
            }
        )
        metrics.learned_threshold.labels(policy, shown, variant).set(learned.threshold)
        metrics.local_error_estimate.labels(policy, shown, variant).set(
            learned.local_error_estimate
        )
    for key, entry in quality.calibrator.status().items():
        metrics.quality_labels.labels(policy, key, variant).set(float(entry["labels"] or 0))


def _start_refit(
    quality: PolicyQuality, *, metrics: metrics_mod.Metrics, audit: audit_mod.AuditLog
) -> None:
    """Fits the arm's score again in a worker thread (a Newton fit on a window of
    labels takes milliseconds: too long for the event loop); held in ``tasks``."""
    assert quality.fitter is not None
    quality.fitter.fitting = True
    job = asyncio.get_running_loop().create_task(_refit(quality, metrics=metrics, audit=audit))
    quality.tasks.add(job)
    job.add_done_callback(quality.tasks.discard)


async def _refit(
    quality: PolicyQuality, *, metrics: metrics_mod.Metrics, audit: audit_mod.AuditLog
) -> None:
    """Fits, installs the model, scores the CALIBRATE labels again under it (their
    thresholds may move) and reports the new model."""
    fitter = quality.fitter
    assert fitter is not None
    try:
        model = await asyncio.to_thread(score_fit.fit, fitter.snapshot(), allowed=fitter.allowed)
    finally:
        fitter.fitting = False
    if model is None:
        return  # one class only so far: the score in force stays
    fitter.install(model, at=time.time())
    # Labels added from here on are scored by the new model as they arrive; those
    # already held are scored again in the thread (milliseconds per thousand), and
    # only the thresholds are chosen again on the loop.
    vectors = quality.calibrator.vectors()
    scores = await asyncio.to_thread(lambda: [model.score(values) for _, values in vectors])
    changes = quality.calibrator.rescored(vectors, scores)
    shown = fitter.status()
    log.info(
        "Combined score refitted policy=%s variant=%s labels=%d intercept=%.4f weights=%s",
        quality.policy,
        quality.variant or "-",
        model.labels,
        model.intercept,
        shown["weights"],
    )
    audit.write(
        {
            "type": "score",
            "policy": quality.policy,
            "variant": quality.variant,
            "labels": model.labels,
            "intercept": shown["intercept"],
            "weights": shown["weights"],
        }
    )
    _report(quality, changes, metrics=metrics, audit=audit)


def completion_text(completion: dict[str, Any]) -> str:
    """The text of an OpenAI-shaped completion's first choice ("" when absent)."""
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


async def shadow_call(
    *,
    quality: PolicyQuality,
    escalator: escalation.Escalator,
    expert: escalation.ExpertState,
    call: escalation.Call,
    task: str | None,
    score: float,
    local_text: str,
    metrics: metrics_mod.Metrics,
    audit: audit_mod.AuditLog,
    values: Mapping[str, float] | None = None,
) -> None:
    """Asks ``expert`` in the background and labels the local answer with its answer;
    refused when it could take the window's shadow spend past the policy's share."""
    outcomes = metrics.shadow_calls
    arm = (quality.policy, quality.variant or "", expert.name)
    worst = escalator.worst_case(expert=expert, call=call)
    share = quality.budget
    try:
        held = await share.admit(
            ledger_backend=escalator.ledger,
            expert=expert.name,
            budget=expert.budget,
            worst_nanos=worst,
            request_id=call.request_id,
        )
    except ledger.LedgerUnavailable:
        outcomes.labels(*arm, "ledger_unavailable").inc()  # fail closed, as escalation does
        return
    if held is None:
        outcomes.labels(*arm, "refused_share").inc()
        return
    actual = worst  # an attempt that may have reached the provider is charged (billing rule)
    try:
        outcome = await escalator.run(experts=[expert], call=call)
        actual = outcome.cost_nanos
    finally:
        await _settle_share(share, escalator.ledger, held, actual)
    metrics.shadow_cost.labels(expert.name).inc(actual / 1_000_000_000)
    if outcome.answer is None:
        outcomes.labels(*arm, "failed").inc()
        return
    outcomes.labels(*arm, "answered").inc()
    await label(
        quality=quality,
        task=task,
        score=score,
        local_text=local_text,
        expert_text=completion_text(outcome.answer.completion),
        metrics=metrics,
        audit=audit,
        values=values,
        request_id=call.request_id,
    )


async def _settle_share(
    share: ShadowBudget, ledger_backend: ledger.Ledger, held: ledger.Reservation, actual: int
) -> None:
    """Settles the shadow book, shielded: a shadow call cancelled at shutdown still
    settles. If the ledger is down the hold expires into worst-case spend after the
    reservation TTL (conservative: the share is never overrun, only used early)."""
    try:
        await asyncio.shield(
            share.settle(ledger_backend=ledger_backend, reservation=held, actual_nanos=actual)
        )
    except ledger.LedgerUnavailable:
        log.warning("Shadow share not settled (ledger unavailable) book=%s", held.expert)
