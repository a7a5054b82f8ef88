"""A policy's learned threshold, mirrored from the gateway into RoutingPolicy.status.

The gateway learns thresholds for policies with ``confidence.target`` and reports them
in ``GET /v1/kascade/status`` under ``quality``; this module turns that entry into the
policy's ``status.quality`` and names every threshold that moved since the status the
operator last wrote (each becomes an Event).
"""

from __future__ import annotations

from typing import Any

__all__ = ["policy_quality"]


def _round(value: object) -> float | None:
    return round(float(value), 6) if isinstance(value, int | float) else None


def policy_quality(
    document: dict[str, Any] | None, *, policy: str, previous: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, list[str]]:
    """(``status.quality``, one message per moved threshold); (None, []) when the
    gateway is unreachable or has no target state for the policy."""
    entry = ((document or {}).get("quality") or {}).get(policy)
    if not isinstance(entry, dict):
        return None, []
    learned = [
        {
            "task": task,
            "threshold": _round(figures.get("threshold")),
            "labels": int(figures.get("labels") or 0),
            "localErrorEstimate": _round(figures.get("localErrorEstimate")),
            "localErrorUpperBound": _round(figures.get("localErrorUpperBound")),
        }
        for task, figures in sorted(
            (entry.get("tasks") or {}).items(), key=lambda kv: (kv[0] != "*", kv[0])
        )
    ][:64]
    before = {
        item.get("task"): item.get("threshold")
        for item in ((previous or {}).get("quality") or {}).get("learned") or []
    }
    messages = [
        f"Learned threshold for task {item['task']} moved from {before.get(item['task'])} to "
        f"{item['threshold']} on {item['labels']} labels (error estimate "
        f"{item['localErrorEstimate']}, upper bound {item['localErrorUpperBound']}; target "
        f"{entry.get('maxLocalErrorRate')})"
        for item in learned
        if item["threshold"] is not None and before.get(item["task"]) != item["threshold"]
    ]
    quality = {"maxLocalErrorRate": entry.get("maxLocalErrorRate"), "learned": learned}
    return quality, messages
