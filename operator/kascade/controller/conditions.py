"""Status conditions: typed constants and one place that sets them.

``lastTransitionTime`` only moves when a condition's status flips, so re-reconciling an
unchanged object yields an identical status and the operator writes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class ConditionType(StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    REFERENCES_RESOLVED = "ReferencesResolved"
    CREDENTIALS_MISSING = "CredentialsMissing"
    BUDGET_EXHAUSTED = "BudgetExhausted"
    THROTTLED = "Throttled"
    UNREACHABLE = "Unreachable"


class Reason(StrEnum):
    RECONCILED = "Reconciled"
    KUBERAY_MISSING = "KubeRayMissing"
    RAYSERVICE_PENDING = "RayServicePending"
    RAYSERVICE_READY = "RayServiceReady"
    RAYSERVICE_UPGRADING = "RayServiceUpgrading"
    MISSING_REFERENCES = "MissingReferences"
    ALL_REFERENCES_FOUND = "AllReferencesFound"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    SECRET_FOUND = "SecretFound"
    WITHIN_BUDGET = "WithinBudget"
    BUDGET_SPENT = "BudgetSpent"
    GATEWAY_UNREACHABLE = "GatewayUnreachable"
    INVALID_SPEC = "InvalidSpec"
    RECONCILE_FAILED = "ReconcileFailed"
    NO_USABLE_EXPERT = "NoUsableExpert"
    EXPERTS_USABLE = "ExpertsUsable"
    LEDGER_NEEDS_REDIS = "LedgerNeedsRedis"


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(
    conditions: list[dict[str, Any]],
    *,
    type_: ConditionType,
    status: bool,
    reason: Reason,
    message: str,
    generation: int | None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Returns a new condition list with ``type_`` set; other conditions are kept as they are."""
    status_text = "True" if status else "False"
    previous = next((c for c in conditions if c.get("type") == type_), None)
    transition = (
        previous["lastTransitionTime"]
        if previous is not None
        and previous.get("status") == status_text
        and "lastTransitionTime" in previous
        else (now or now_rfc3339())
    )
    updated: dict[str, Any] = {
        "type": str(type_),
        "status": status_text,
        "reason": str(reason),
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    others = [c for c in conditions if c.get("type") != type_]
    return sorted([*others, updated], key=lambda c: str(c.get("type")))


def set_conditions(
    conditions: list[dict[str, Any]],
    *,
    generation: int | None,
    updates: list[tuple[ConditionType, bool, Reason, str]],
) -> list[dict[str, Any]]:
    """Sets several conditions at once: ``(type, status, reason, message)`` each."""
    for type_, status, reason, message in updates:
        conditions = set_condition(
            conditions,
            type_=type_,
            status=status,
            reason=reason,
            message=message,
            generation=generation,
        )
    return conditions
