"""A policy's learned threshold, mirrored from the gateway into RoutingPolicy.status.

The gateway learns thresholds for policies with ``confidence.target`` and reports them
in ``GET /v1/kascade/status`` under ``quality``; this module turns that entry into the
policy's ``status.quality`` and names every threshold that moved since the status the
operator last wrote (each becomes an Event). A policy with A/B variants learns per
variant (the gateway's entry has them under ``variants``); its entries then name it.
An arm that fits its combined score (``confidence.target.fitScore``) adds to each of
its entries the labels the model in use was fitted on (``scoreLabels``); an arm whose
target takes user ratings (``feedbackLabels``), how many labels came from them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["policy_quality"]

MAX_LEARNED = 64
"""Entries kept in status.quality.learned (the API's bound)."""


def _round(value: object) -> float | None:
    return round(float(value), 6) if isinstance(value, int | float) else None


def _entries(figures: dict[str, Any], *, variant: str | None) -> list[dict[str, Any]]:
    """One entry per task of one arm (the policy, or one of its variants)."""
    fitted = figures.get("fittedScore")
    fitted_on = fitted.get("fittedOn") if isinstance(fitted, dict) else None
    rated = figures.get("feedbackLabels")
    out = []
    for task, item in (figures.get("tasks") or {}).items():
        entry: dict[str, Any] = {} if variant is None else {"variant": variant}
        entry.update(
            task=task,
            threshold=_round(item.get("threshold")),
            labels=int(item.get("labels") or 0),
            localErrorEstimate=_round(item.get("localErrorEstimate")),
            localErrorUpperBound=_round(item.get("localErrorUpperBound")),
        )
        if isinstance(fitted_on, int):  # the arm fits its score: every task uses that model
            entry["scoreLabels"] = fitted_on
        if isinstance(rated, int):  # per arm, like scoreLabels: repeated on each task
            entry["feedbackLabels"] = rated
        out.append(entry)
    return out


def _arms(entry: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """(variant, figures) of each arm in the gateway's entry (variant None: the policy)."""
    variants = entry.get("variants")
    if isinstance(variants, dict):
        return [(name, figures) for name, figures in variants.items() if isinstance(figures, dict)]
    return [(None, entry)]


def _where(item: dict[str, Any]) -> str:
    variant = item.get("variant")
    return f"task {item['task']}" if variant is None else f"variant {variant}, task {item['task']}"


def policy_quality(
    document: dict[str, Any] | None, *, policy: str, previous: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, list[str]]:
    """(``status.quality``, one message per moved threshold); (None, []) when the
    gateway is unreachable or has no target state for the policy."""
    entry = ((document or {}).get("quality") or {}).get(policy)
    if not isinstance(entry, dict):
        return None, []
    arms = _arms(entry)
    if not arms:
        return None, []
    targets = {variant: figures.get("maxLocalErrorRate") for variant, figures in arms}
    learned = [item for variant, figures in arms for item in _entries(figures, variant=variant)]
    # Every arm's all-traffic entry first, so the bound never drops one.
    learned.sort(key=lambda item: (item["task"] != "*", item.get("variant") or "", item["task"]))
    learned = learned[:MAX_LEARNED]
    before = {
        (item.get("variant"), item.get("task")): item.get("threshold")
        for item in ((previous or {}).get("quality") or {}).get("learned") or []
    }
    messages = [
        f"Learned threshold for {_where(item)} moved from {before.get(key)} to "
        f"{item['threshold']} on {item['labels']} labels (error estimate "
        f"{item['localErrorEstimate']}, upper bound {item['localErrorUpperBound']}; target "
        f"{targets.get(item.get('variant'))})"
        for item in learned
        if item["threshold"] is not None
        and before.get(key := (item.get("variant"), item["task"])) != item["threshold"]
    ]
    # The operator compiles the policy's one target into every variant (the API has no
    # per-variant target), so any arm's figure is the policy's.
    return {"maxLocalErrorRate": arms[0][1].get("maxLocalErrorRate"), "learned": learned}, messages
