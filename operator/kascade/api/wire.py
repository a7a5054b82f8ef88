"""The Kascade HTTP contract shared by the gateway, the serving replicas and the simulator.

Every ``x-kascade-*`` header and every Kascade field added to an OpenAI-style body is
named here once: the serving replica and the simulated expert write them, the gateway
reads them and writes its own to clients. Renaming one here renames it on both ends.

Standard library only: the data plane imports this module without the API's models.
"""

from __future__ import annotations

# ------------------------------------------------------------- from a local pool (or sim)

CONFIDENCE_HEADER = "x-kascade-confidence"
"""The answer's confidence in [0, 1] (non-streamed answers; the gateway also writes it)."""

CONFIDENCE_METHOD_HEADER = "x-kascade-confidence-method"
"""The confidence method the replica used (``LocalModelPool.spec.confidence.method``)."""

CONFIDENCE_FIELD = "confidence"
"""Body field (and final stream chunk field) carrying the confidence."""

CONFIDENCE_METHOD_FIELD = "confidence_method"
"""Body field (and final stream chunk field) naming the confidence method."""

CONFIDENCE_SIGNALS_FIELD = "confidence_signals"
"""Body field with the per-method figures the gateway's combined score reads."""

# ------------------------------------------------------------------- from a client

TASK_HEADER = "x-kascade-task"
"""The caller's task label, matched by a policy's ``when.taskLabels``."""

# --------------------------------------------------------------- from the gateway

REQUEST_ID_HEADER = "x-kascade-request-id"
ROUTE_HEADER = "x-kascade-route"
"""``local``, ``expert:<name>``, ``cache`` ... : where the answer came from."""
REASON_HEADER = "x-kascade-reason"
"""Why the request was routed as it was (the escalation reason)."""
RULE_HEADER = "x-kascade-rule"
"""The name of the policy rule the request matched, when it matched a named one."""
COST_HEADER = "x-kascade-cost-usd"
TENANT_HEADER = "x-kascade-tenant"
PRIVACY_HEADER = "x-kascade-privacy"
DEGENERATION_HEADER = "x-kascade-degeneration"
DEGRADED_HEADER = "x-kascade-degraded"
VARIANT_HEADER = "x-kascade-variant"
"""The policy variant (A/B arm) that answered, when the policy has variants."""
