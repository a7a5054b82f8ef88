"""Labels for a declared quality target: sampling, shadow calls, the learned threshold.

For a policy with ``confidence.target`` (see ``calibration`` for the method and its
guarantee), each request whose local answer was scored is drawn into the labelled
sample with probability ``shadowFraction``, whatever its route:

- drawn and escalated: the expert's answer labels the local one, at no extra cost;
- drawn and kept local: a background *shadow* call asks the policy's first expert
  (through the escalator: reserve, throttle, call, settle, so the expert's budget and
  the billing rule hold), within ``maxShadowBudgetShare`` of that expert's budget
  limit; the caller never waits for it.

A label is ``answer_match.agree(local, expert)``. Every change of a learned threshold
is a log line and an audit line (``type: threshold``) and moves the
``kascade_learned_threshold`` gauge. State is per gateway replica (each replica learns
from its own traffic) and starts again when the policy's target changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from kascade.gateway import config as config_mod
from kascade.gateway.experts import escalation
from kascade.gateway.observe import audit as audit_mod
from kascade.gateway.observe import metrics as metrics_mod
from kascade.gateway.route import answer_match, calibration

__all__ = ["PolicyQuality", "Quality"]

log = logging.getLogger("kascade.gateway")


@dataclasses.dataclass
class PolicyQuality:
    """One policy's calibrator and shadow budget, for one target config."""

    target: config_mod.TargetConfig
    calibrator: calibration.Calibrator
    budget: calibration.ShadowBudget


class Quality:
    """Every policy's learning state, kept across config reloads while targets hold."""

    def __init__(self, *, rng: Callable[[], float] | None = None) -> None:
        self._rng = rng
        self._policies: dict[str, PolicyQuality] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        """Shadow calls in flight (held so they are not garbage-collected mid-call)."""

    def policy(self, *, name: str, target: config_mod.TargetConfig) -> PolicyQuality:
        """The state for ``name``; new when the target is new or changed."""
        found = self._policies.get(name)
        if found is None or found.target != target:
            found = self._policies[name] = PolicyQuality(
                target=target,
                calibrator=calibration.Calibrator(
                    max_error=target.max_local_error_rate,
                    delta=1.0 - target.confidence_level,
                    window=target.window_labels,
                    min_labels=target.min_labels,
                ),
                budget=calibration.ShadowBudget(
                    fraction=target.shadow_fraction,
                    share=target.max_shadow_budget_share,
                    rng=self._rng,
                ),
            )
        return found

    def status(self) -> dict[str, Any]:
        """Per policy: the target, labels and learned thresholds (for the status endpoint)."""
        return {
            name: {
                "maxLocalErrorRate": q.target.max_local_error_rate,
                "confidenceLevel": q.target.confidence_level,
                "tasks": q.calibrator.status(),
            }
            for name, q in sorted(self._policies.items())
        }

    async def close(self) -> None:
        """Cancels shadow calls still in flight."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def label(
    *,
    quality: PolicyQuality,
    policy: str,
    task: str | None,
    score: float,
    local_text: str,
    expert_text: str,
    metrics: metrics_mod.Metrics,
    audit: audit_mod.AuditLog,
) -> None:
    """Adds one label; reports every threshold it moves."""
    right = answer_match.agree(answer=local_text, reference=expert_text)
    for key, learned in quality.calibrator.add(score=score, right=right, task=task):
        shown = key or "*"
        log.info(
            "Learned threshold changed policy=%s task=%s threshold=%.2f labels=%d "
            "error_estimate=%.4f error_upper_bound=%.4f",
            policy,
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
                "task": shown,
                "threshold": learned.threshold,
                "labels": learned.labels,
                "local_error_estimate": round(learned.local_error_estimate, 6),
                "local_error_upper_bound": round(learned.upper_bound, 6),
                "max_local_error_rate": quality.target.max_local_error_rate,
            }
        )
        metrics.learned_threshold.labels(policy, shown).set(learned.threshold)
        metrics.local_error_estimate.labels(policy, shown).set(learned.local_error_estimate)
    for key, entry in quality.calibrator.status().items():
        metrics.quality_labels.labels(policy, key).set(float(entry["labels"] or 0))


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
    policy: str,
    task: str | None,
    score: float,
    local_text: str,
    metrics: metrics_mod.Metrics,
    audit: audit_mod.AuditLog,
) -> None:
    """Asks ``expert`` in the background and labels the local answer with its answer;
    refused when it could take shadow spend past the policy's share of the budget."""
    worst = escalator.worst_case(expert=expert, call=call)
    if not quality.budget.admit(
        expert=expert.name, worst_nanos=worst, limit_nanos=expert.budget.limit_nanos
    ):
        metrics.shadow_calls.labels(policy, expert.name, "refused_share").inc()
        return
    actual = worst  # an attempt that may have reached the provider is charged (billing rule)
    try:
        outcome = await escalator.run(experts=[expert], call=call)
        actual = outcome.cost_nanos
    finally:
        quality.budget.settle(expert=expert.name, worst_nanos=worst, actual_nanos=actual)
    metrics.shadow_cost.labels(expert.name).inc(actual / 1_000_000_000)
    if outcome.answer is None:
        metrics.shadow_calls.labels(policy, expert.name, "failed").inc()
        return
    metrics.shadow_calls.labels(policy, expert.name, "answered").inc()
    label(
        quality=quality,
        policy=policy,
        task=task,
        score=score,
        local_text=local_text,
        expert_text=completion_text(outcome.answer.completion),
        metrics=metrics,
        audit=audit,
    )
