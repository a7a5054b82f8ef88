"""Tenant: a team or application that calls a namespace's gateway with its own API keys,
money budget, rate limits and allowed policies.

The keys themselves live in a Secret the tenant's owners manage; this object only names
it, so it can sit in git (GitOps) with no key material in it.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import pydantic

from kascade.api.v1alpha1 import common

KIND = "Tenant"
PLURAL = "tenants"


class SecretRef(common.KascadeModel):
    """A whole Secret in the Tenant's namespace."""

    name: common.ObjectName
    """Name of the Secret. Every key of its data is one accepted API key (the key's
    name is a label such as 'ci' or 'alice'): add a key to issue one, delete it to
    revoke it. Changes take effect without a restart once the kubelet has updated the
    mounted Secret (its sync period, about a minute by default), plus at most a second."""


class TenantKeys(common.KascadeModel):
    """Where the tenant's API keys are."""

    secret_ref: SecretRef = pydantic.Field(alias="secretRef")
    """The Secret holding the keys. It is mounted into the gateway, read as hashes, and
    never copied into status, events, logs or ConfigMaps."""


class TenantBudget(common.KascadeModel):
    """A hard money limit on this tenant's escalations, over all experts. A request
    reserves its worst case against this budget and the expert's in one atomic step."""

    limit_usd: common.UsdAmount = pydantic.Field(alias="limitUSD")
    """Most USD the tenant's escalations may cost per window, > 0."""

    window: Literal["rolling-24h", "calendar-day", "calendar-month"] = "calendar-month"
    """Accounting window: 'rolling-24h', 'calendar-day' or 'calendar-month' (UTC)."""

    on_exhausted: Literal["reject", "fallback-local"] = pydantic.Field(
        default="reject", alias="onExhausted"
    )
    """When the budget is spent: 'reject' fails requests that need an expert with 429,
    'fallback-local' answers them with the local model (marked degraded)."""


class TenantRateLimits(common.KascadeModel):
    """Throttles on the tenant's requests, shared by every gateway replica (with Redis).
    Unset means no limit of that kind."""

    requests_per_minute: Annotated[int, pydantic.Field(ge=1, le=1_000_000)] | None = pydantic.Field(
        default=None, alias="requestsPerMinute"
    )
    """Most requests per minute."""

    tokens_per_minute: Annotated[int, pydantic.Field(ge=1, le=1_000_000_000)] | None = (
        pydantic.Field(default=None, alias="tokensPerMinute")
    )
    """Most tokens per minute, counted as estimated prompt tokens plus max_tokens (for a
    request without one, the largest defaultMaxTokens of the policy's experts)."""

    max_concurrency: Annotated[int, pydantic.Field(ge=1, le=10_000)] | None = pydantic.Field(
        default=None, alias="maxConcurrency"
    )
    """Most requests in flight at once."""


class TenantSpec(common.KascadeModel):
    """Desired state of a Tenant."""

    keys: TenantKeys
    """The tenant's API keys (a Secret reference)."""

    policies: Annotated[list[common.ObjectName], pydantic.Field(max_length=256)] | None = None
    """RoutingPolicies the tenant may call (403 for others). Unset: every policy of
    the namespace."""

    budget: TenantBudget | None = None
    """Money limit on the tenant's escalations. Unset: only the experts' budgets apply."""

    rate_limits: TenantRateLimits = pydantic.Field(
        default_factory=TenantRateLimits, alias="rateLimits"
    )
    """Requests/min, tokens/min and concurrency of the tenant."""

    confidence_offset: Annotated[float, pydantic.Field(ge=-0.5, le=0.5)] = pydantic.Field(
        default=0.0, alias="confidenceOffset"
    )
    """Added to each policy's confidence threshold for this tenant (then clamped to
    [0, 1]): positive escalates more often, negative less."""


class TenantSpend(common.KascadeModel):
    """Money spent by the tenant in the current budget window."""

    spent_usd: Annotated[float, pydantic.Field(ge=0.0)] = pydantic.Field(
        default=0.0, alias="spentUSD"
    )
    """Settled cost of completed escalations in the current window."""

    reserved_usd: Annotated[float, pydantic.Field(ge=0.0)] = pydantic.Field(
        default=0.0, alias="reservedUSD"
    )
    """Worst-case cost held by escalations in flight."""

    updated_at: common.Timestamp | None = pydantic.Field(default=None, alias="updatedAt")
    """When these figures were read from the ledger."""


class TenantStatus(common.KascadeModel):
    """Observed state of a Tenant, written by the operator."""

    conditions: Annotated[list[common.Condition], pydantic.Field(max_length=16)] = pydantic.Field(
        default_factory=list, json_schema_extra=common.CONDITIONS_LIST
    )
    """Ready: the keys Secret exists and holds at least one key."""

    observed_generation: int | None = pydantic.Field(default=None, alias="observedGeneration")
    """The metadata.generation this status describes."""

    spend: TenantSpend | None = None
    """Spend in the current budget window."""


class Tenant(common.KascadeModel):
    """A caller of the namespace's gateway: API keys (from a Secret), a money budget,
    rate limits and the policies it may call."""

    api_version: Literal["kascade.io/v1alpha1"] = pydantic.Field(
        default="kascade.io/v1alpha1", alias="apiVersion"
    )
    """kascade.io/v1alpha1."""

    kind: Literal["Tenant"] = "Tenant"
    """Tenant."""

    metadata: common.ObjectMeta
    """Standard object metadata."""

    spec: TenantSpec
    """Desired state."""

    status: TenantStatus | None = None
    """Observed state, written by the operator."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule="self.metadata.name.size() <= 63",
            message="metadata.name of a Tenant must be at most 63 characters",
            check=lambda t: len(t.metadata.name) <= 63,
        ),
    )
