"""What happened to one request: becomes response headers, metrics and the audit line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kascade.api import wire
from kascade.gateway import ledger, runtime
from kascade.gateway.cache import memory as cache_mod
from kascade.gateway.experts import escalation
from kascade.gateway.tenants import access


def usd_text(nanos: int) -> str:
    """Nano-USD as a plain decimal string without trailing zeros ("0.002", "0")."""
    return format(ledger.nanos_to_usd(nanos).normalize(), "f")


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
    pool: str = ""
    """The pool whose local pass this request used (or would have used)."""
    privacy: str | None = None
    """What was done about detected personal data, e.g. ``redacted:email,phone``."""
    task: str = "none"
    """The task label for metrics (rules.task_label)."""
    usage: dict[str, Any] | None = None
    """Token usage of the answer sent (local or cached), for the all-expert baseline."""
    threshold_learned: bool = False
    """The threshold in force was learned for the policy's quality target."""
    degeneration: str | None = None
    """The degeneration limit the local answer broke (``repetition``, ...), if any."""
    format_problem: str | None = None
    """Why a local answer did not follow the requested response_format."""
    tool_calls: tuple[str, ...] = ()
    """Names of the functions the answer calls."""
    tool_arguments: tuple[str, ...] = ()
    """Their arguments (JSON text); audited only with `audit.includePrompts`."""
    caller: access.Caller = access.ANONYMOUS_CALLER
    """Who sent the request (its tenant, if any)."""
    prompt: list[dict[str, Any]] | None = None
    """The messages after redaction, for audit lines when `audit.includePrompts` is on."""

    def headers(self) -> dict[str, str]:
        h = {
            wire.REQUEST_ID_HEADER: self.request_id,
            wire.ROUTE_HEADER: self.route,
            wire.REASON_HEADER: self.reason,
            wire.COST_HEADER: usd_text(self.cost_nanos),
            wire.TENANT_HEADER: self.caller.label,
        }
        if self.rule_name is not None:
            h[wire.RULE_HEADER] = _header_text(self.rule_name)
        if self.policy.variant is not None:
            h[wire.VARIANT_HEADER] = self.policy.variant
        if self.confidence is not None:
            h[wire.CONFIDENCE_HEADER] = f"{self.confidence:.4f}"
        if self.privacy is not None:
            h[wire.PRIVACY_HEADER] = self.privacy
        if self.degeneration is not None:
            h[wire.DEGENERATION_HEADER] = self.degeneration
        if self.degraded is not None:
            h[wire.DEGRADED_HEADER] = _header_text(self.degraded)
        return h


def _header_text(text: str) -> str:
    """One line, ASCII only, at most 500 characters: configured text (the policy's
    fallback message, a rule name in a hand-written config) may hold any character."""
    line = " ".join(text.split())[:500]
    return line.encode("ascii", "replace").decode()
