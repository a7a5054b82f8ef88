"""CloudExpert: a hosted LLM endpoint, its credentials, prices, budget and throttles."""

from __future__ import annotations

import enum
import re
from typing import Annotated, ClassVar, Literal

import pydantic

from kascade.api import limits
from kascade.api.v1alpha1 import common, timezones

KIND = "CloudExpert"
PLURAL = "cloudexperts"

ENDPOINT = limits.ENDPOINT
# Plain http is only acceptable where traffic never leaves the node or the cluster:
# loopback, or a Service's cluster DNS name (<svc>.<ns>.svc[.cluster.local]).
INSECURE_ENDPOINT = (
    r"^http://(localhost|127\.0\.0\.1|([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+svc(\.cluster\.local)?)"
    r"(:[0-9]{1,5})?(/[^\s?#]*)?$"
)
# user:password@ in the authority: credentials that would bypass the Secret and land in
# the gateway's ConfigMap.
USERINFO = r"^[a-zA-Z][-+.a-zA-Z0-9]*://[^/?#]*@"
# Providers with a well-known public endpoint; the others need spec.endpoint.
DEFAULT_ENDPOINTS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}


_TIME_ZONES = frozenset(timezones.TIME_ZONES)


class ExpertConditionType(enum.StrEnum):
    """Condition types a CloudExpert reports."""

    READY = "Ready"
    """The expert can take escalations now."""
    BUDGET_EXHAUSTED = "BudgetExhausted"
    """The budget of the current window is spent."""
    THROTTLED = "Throttled"
    """A rate limit (own or the provider's 429) holds escalations back."""
    CREDENTIALS_MISSING = "CredentialsMissing"
    """The referenced Secret or key does not exist."""
    UNREACHABLE = "Unreachable"
    """Calls fail or time out; the circuit breaker may be open."""


class SecretCredentials(common.KascadeModel):
    """Where the API key comes from."""

    secret_ref: common.SecretKeyRef = pydantic.Field(alias="secretRef")
    """Secret key holding the API key. It is mounted into the gateway and never copied
    into status, events, logs or ConfigMaps."""


class AzureSettings(common.KascadeModel):
    """Settings that only Azure OpenAI needs."""

    api_version: Annotated[
        str,
        pydantic.Field(
            max_length=32,
            pattern=common.hinted(
                r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$",
                "a date like 2024-10-21, optionally with -preview",
            ),
        ),
    ] = pydantic.Field(default="2024-10-21", alias="apiVersion")
    """The api-version query parameter, e.g. '2024-10-21'. spec.model is the deployment
    name."""


class Pricing(common.KascadeModel):
    """Prices used to reserve and settle the cost of each call."""

    input_per_million_tokens: common.UsdAmount = pydantic.Field(alias="inputPerMillionTokens")
    """Price of one million prompt tokens, > 0."""

    output_per_million_tokens: common.UsdAmount = pydantic.Field(alias="outputPerMillionTokens")
    """Price of one million completion tokens, > 0."""

    currency: Literal["USD"] = "USD"
    """Currency of the prices; only USD."""

    max_tokens_per_image: Annotated[int, pydantic.Field(ge=0, le=1_000_000)] = pydantic.Field(
        default=2000, alias="maxTokensPerImage"
    )
    """Most prompt tokens one image can cost; each image part is reserved at this
    (2000 covers OpenAI's and Anthropic's largest images)."""


class Budget(common.KascadeModel):
    """A hard money limit per window: spend plus reservations never exceed limitUSD."""

    limit_usd: common.UsdAmount = pydantic.Field(alias="limitUSD")
    """Most USD the expert may cost per window, > 0."""

    window: Literal["rolling-24h", "calendar-day", "calendar-month"] = "calendar-day"
    """Accounting window: 'rolling-24h' (the last 24 hours), 'calendar-day' or
    'calendar-month' (reset at midnight / the 1st in timeZone)."""

    time_zone: Annotated[str, pydantic.Field(min_length=1, max_length=64)] = pydantic.Field(
        default="UTC", alias="timeZone"
    )
    """IANA time zone in which calendar windows start, e.g. 'UTC' or 'Europe/Berlin'."""

    on_exhausted: Literal["fallback-local", "reject"] = pydantic.Field(
        default="fallback-local", alias="onExhausted"
    )
    """When the budget is spent: 'fallback-local' answers with the local model (marked
    degraded), 'reject' fails the request with 429."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule=f"self.timeZone in {list(timezones.TIME_ZONES)}",
            message="budget.timeZone must be an IANA time zone name such as UTC, "
            "Europe/Berlin or America/New_York (case-sensitive)",
            field_path=".timeZone",
            check=lambda b: b.time_zone in _TIME_ZONES,
        ),
    )


class RateLimits(common.KascadeModel):
    """Throttles shared by every gateway replica. Unset means no limit of that kind."""

    requests_per_minute: Annotated[int, pydantic.Field(ge=1, le=1_000_000)] | None = pydantic.Field(
        default=None, alias="requestsPerMinute"
    )
    """Most calls per minute."""

    tokens_per_minute: Annotated[int, pydantic.Field(ge=1, le=1_000_000_000)] | None = (
        pydantic.Field(default=None, alias="tokensPerMinute")
    )
    """Most prompt plus completion tokens per minute."""

    max_concurrency: Annotated[int, pydantic.Field(ge=1, le=10_000)] | None = pydantic.Field(
        default=None, alias="maxConcurrency"
    )
    """Most calls in flight at once."""


class Timeouts(common.KascadeModel):
    """Time limits of one call."""

    connect_seconds: Annotated[float, pydantic.Field(gt=0.0, le=60.0)] = pydantic.Field(
        default=5.0, alias="connectSeconds"
    )
    """Time to establish the connection."""

    request_seconds: Annotated[float, pydantic.Field(gt=0.0, le=3600.0)] = pydantic.Field(
        default=60.0, alias="requestSeconds"
    )
    """Time for the whole call when not streamed; for streamed calls the default of
    firstTokenSeconds and idleSeconds."""

    first_token_seconds: Annotated[float, pydantic.Field(gt=0.0, le=3600.0)] | None = (
        pydantic.Field(default=None, alias="firstTokenSeconds")
    )
    """For streamed calls, time until the first token arrives."""

    idle_seconds: Annotated[float, pydantic.Field(gt=0.0, le=3600.0)] | None = pydantic.Field(
        default=None, alias="idleSeconds"
    )
    """For streamed calls, longest gap between two chunks; a stream cut for it ends
    with an error event and [DONE]."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule="self.connectSeconds <= self.requestSeconds",
            message="timeouts.connectSeconds must be <= timeouts.requestSeconds",
            field_path=".connectSeconds",
            check=lambda t: t.connect_seconds <= t.request_seconds,
        ),
        common.CelRule(
            rule="!has(self.firstTokenSeconds) || self.firstTokenSeconds <= self.requestSeconds",
            message="timeouts.firstTokenSeconds must be <= timeouts.requestSeconds",
            field_path=".firstTokenSeconds",
            check=lambda t: (
                t.first_token_seconds is None or t.first_token_seconds <= t.request_seconds
            ),
        ),
    )


RetryCondition = Literal["rate-limited", "server-error", "timeout", "connection-error"]


def _all_retry_conditions() -> list[RetryCondition]:
    return ["rate-limited", "server-error", "timeout", "connection-error"]


class Retries(common.KascadeModel):
    """Bounded retries of a failed call, with exponential backoff and jitter."""

    max_retries: Annotated[int, pydantic.Field(ge=0, le=limits.MAX_RETRIES)] = pydantic.Field(
        default=2, alias="maxRetries"
    )
    """Retries after the first attempt; 0 disables retries."""

    initial_backoff_millis: Annotated[int, pydantic.Field(ge=0, le=60000)] = pydantic.Field(
        default=250, alias="initialBackoffMillis"
    )
    """Wait before the first retry, doubling each retry up to maxBackoffMillis; each
    wait is a random 50-100 % of it (jitter). A longer Retry-After header wins, up to
    maxBackoffMillis."""

    max_backoff_millis: Annotated[int, pydantic.Field(ge=0, le=300000)] = pydantic.Field(
        default=5000, alias="maxBackoffMillis"
    )
    """Longest wait between retries; an upstream Retry-After longer than this moves on
    to the next expert instead of waiting."""

    max_retry_after_seconds: Annotated[int, pydantic.Field(ge=1, le=86400)] = pydantic.Field(
        default=300, alias="maxRetryAfterSeconds"
    )
    """Longest upstream Retry-After honoured: after a 429 no replica calls the expert
    for that long; longer ones are cut to this (and counted in
    kascade_expert_retry_after_capped_total)."""

    retry_on: Annotated[list[RetryCondition], pydantic.Field(max_length=4)] = pydantic.Field(
        default_factory=_all_retry_conditions,
        alias="retryOn",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Failures worth a retry: 'rate-limited' (429), 'server-error' (5xx), 'timeout',
    'connection-error'."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule="self.initialBackoffMillis <= self.maxBackoffMillis",
            message="retries.initialBackoffMillis must be <= retries.maxBackoffMillis",
            field_path=".initialBackoffMillis",
            check=lambda r: r.initial_backoff_millis <= r.max_backoff_millis,
        ),
    )


class CircuitBreaker(common.KascadeModel):
    """Stops calling an expert that keeps failing, and probes it before resuming."""

    enabled: bool = True
    """Whether the breaker is active."""

    failure_threshold: Annotated[int, pydantic.Field(ge=1, le=1000)] = pydantic.Field(
        default=5, alias="failureThreshold"
    )
    """Failed calls within windowSeconds that open the circuit."""

    window_seconds: Annotated[int, pydantic.Field(ge=1, le=3600)] = pydantic.Field(
        default=60, alias="windowSeconds"
    )
    """Window in which failures are counted."""

    open_seconds: Annotated[int, pydantic.Field(ge=1, le=3600)] = pydantic.Field(
        default=30, alias="openSeconds"
    )
    """How long the circuit stays open before probe calls are let through."""

    half_open_probes: Annotated[int, pydantic.Field(ge=1, le=100)] = pydantic.Field(
        default=1, alias="halfOpenProbes"
    )
    """Successful probe calls needed to close the circuit again."""


Capability = Literal["chat", "streaming", "tools", "vision", "json-mode", "logprobs"]


def _basic_capabilities() -> list[Capability]:
    return ["chat", "streaming"]


class DataPolicy(common.KascadeModel):
    """What data may be sent to this expert."""

    allow_personal_data: bool = pydantic.Field(default=False, alias="allowPersonalData")
    """Whether requests in which personal data was detected, and not redacted, may be
    sent to this expert. False keeps them away from it."""


class CloudExpertSpec(common.KascadeModel):
    """Desired state of a CloudExpert."""

    provider: Literal["openai", "anthropic", "azure-openai", "openai-compatible"]
    """API flavour: 'openai', 'anthropic', 'azure-openai' or 'openai-compatible' (any
    server speaking the OpenAI chat completions API)."""

    endpoint: (
        Annotated[
            str,
            pydantic.Field(
                max_length=limits.ENDPOINT_MAX,
                pattern=common.hinted(
                    ENDPOINT, "an http:// or https:// URL without query or fragment"
                ),
            ),
        ]
        | None
    ) = None
    """Base URL of the API. Defaults to https://api.openai.com/v1 (openai) and
    https://api.anthropic.com (anthropic); required for azure-openai and
    openai-compatible. Must be https:// unless allowInsecureHttp is true."""

    allow_insecure_http: bool = pydantic.Field(default=False, alias="allowInsecureHttp")
    """Allows an http:// endpoint, but only to loopback (localhost, 127.0.0.1) or an
    in-cluster Service (*.svc, *.svc.cluster.local)."""

    model: Annotated[
        str,
        pydantic.Field(
            min_length=1,
            max_length=256,
            pattern=common.hinted(r"^[^\s]+$", "a name without spaces"),
        ),
    ]
    """Model name sent to the provider, e.g. 'gpt-4o-mini'; for azure-openai the
    deployment name."""

    azure: AzureSettings | None = None
    """Azure OpenAI settings; only with provider azure-openai."""

    credentials: SecretCredentials | None = None
    """API key; required except for openai-compatible endpoints without auth."""

    pricing: Pricing
    """Prices per million tokens."""

    budget: Budget
    """Money limit per window."""

    rate_limits: RateLimits = pydantic.Field(default_factory=RateLimits, alias="rateLimits")
    """Requests, tokens and concurrency limits."""

    timeouts: Timeouts = pydantic.Field(default_factory=Timeouts)
    """Per-call time limits."""

    retries: Retries = pydantic.Field(default_factory=Retries)
    """Retry behaviour on failures."""

    circuit_breaker: CircuitBreaker = pydantic.Field(
        default_factory=CircuitBreaker, alias="circuitBreaker"
    )
    """Failure isolation."""

    max_context_tokens: Annotated[int, pydantic.Field(ge=1, le=10_000_000)] | None = pydantic.Field(
        default=None, alias="maxContextTokens"
    )
    """Largest prompt plus max_tokens the model accepts; larger requests skip this expert."""

    capabilities: Annotated[list[Capability], pydantic.Field(max_length=6)] = pydantic.Field(
        default_factory=_basic_capabilities,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Features the model supports: chat, streaming, tools, vision, json-mode, logprobs.
    Requests needing a missing capability skip this expert."""

    data_policy: DataPolicy = pydantic.Field(default_factory=DataPolicy, alias="dataPolicy")
    """Data protection settings."""

    suspend: bool = False
    """True stops all escalations to this expert without deleting it."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule=f"!has(self.endpoint) || !self.endpoint.matches('{USERINFO}')",
            message="endpoint must not carry credentials (user:password@host): put the API "
            "key in a Secret and reference it in credentials.secretRef",
            field_path=".endpoint",
            check=lambda s: s.endpoint is None or re.match(USERINFO, s.endpoint) is None,
        ),
        common.CelRule(
            rule="self.provider in ['openai', 'anthropic'] || has(self.endpoint)",
            message="endpoint is required when provider is 'azure-openai' or 'openai-compatible'",
            field_path=".endpoint",
            check=lambda s: s.provider in DEFAULT_ENDPOINTS or s.endpoint is not None,
        ),
        common.CelRule(
            rule="!has(self.endpoint) || self.endpoint.startsWith('https://') || "
            "self.allowInsecureHttp",
            message="endpoint must start with https:// (set allowInsecureHttp: true to allow "
            "http:// to localhost, 127.0.0.1 or an in-cluster *.svc service)",
            field_path=".endpoint",
            check=lambda s: (
                s.endpoint is None or s.endpoint.startswith("https://") or s.allow_insecure_http
            ),
        ),
        common.CelRule(
            rule="!has(self.endpoint) || self.endpoint.startsWith('https://') || "
            f"self.endpoint.matches(r'{INSECURE_ENDPOINT}')",
            message="http:// endpoints are accepted only for localhost, 127.0.0.1, "
            "<service>.<namespace>.svc or <service>.<namespace>.svc.cluster.local; "
            "use https:// for anything else",
            field_path=".endpoint",
            check=lambda s: (
                s.endpoint is None
                or s.endpoint.startswith("https://")
                or re.fullmatch(INSECURE_ENDPOINT, s.endpoint) is not None
            ),
        ),
        common.CelRule(
            rule="self.provider == 'openai-compatible' || has(self.credentials)",
            message="credentials.secretRef is required when provider is 'openai', "
            "'anthropic' or 'azure-openai'",
            field_path=".credentials",
            check=lambda s: s.provider == "openai-compatible" or s.credentials is not None,
        ),
        common.CelRule(
            rule="!has(self.azure) || self.provider == 'azure-openai'",
            message="azure is accepted only when provider is 'azure-openai'",
            field_path=".azure",
            check=lambda s: s.azure is None or s.provider == "azure-openai",
        ),
    )


class Spend(common.KascadeModel):
    """Money spent in the current budget window."""

    window_start: common.Timestamp | None = pydantic.Field(default=None, alias="windowStart")
    """Start of the current window."""

    spent_usd: Annotated[float, pydantic.Field(ge=0.0)] = pydantic.Field(
        default=0.0, alias="spentUSD"
    )
    """Settled cost of completed calls."""

    reserved_usd: Annotated[float, pydantic.Field(ge=0.0)] = pydantic.Field(
        default=0.0, alias="reservedUSD"
    )
    """Worst-case cost reserved by calls in flight."""

    remaining_usd: Annotated[float, pydantic.Field(ge=0.0)] = pydantic.Field(
        default=0.0, alias="remainingUSD"
    )
    """limitUSD minus spent and reserved."""

    updated_at: common.Timestamp | None = pydantic.Field(default=None, alias="updatedAt")
    """When these figures were read from the ledger."""


class CircuitStatus(common.KascadeModel):
    """State of the circuit breaker."""

    state: Literal["closed", "open", "half-open"] = "closed"
    """'closed' (calls flow), 'open' (calls skipped) or 'half-open' (probing)."""

    since: common.Timestamp | None = None
    """When the circuit entered this state."""

    recent_failures: Annotated[int, pydantic.Field(ge=0)] = pydantic.Field(
        default=0, alias="recentFailures"
    )
    """Failures counted in the current window."""


class CloudExpertStatus(common.KascadeModel):
    """Observed state of a CloudExpert, written by the operator."""

    conditions: Annotated[list[common.Condition], pydantic.Field(max_length=16)] = pydantic.Field(
        default_factory=list, json_schema_extra=common.CONDITIONS_LIST
    )
    """Ready, BudgetExhausted, Throttled, CredentialsMissing and Unreachable."""

    observed_generation: int | None = pydantic.Field(default=None, alias="observedGeneration")
    """The metadata.generation this status describes."""

    spend: Spend | None = None
    """Spend in the current budget window."""

    circuit: CircuitStatus | None = None
    """Circuit breaker state."""


class CloudExpert(common.KascadeModel):
    """A hosted LLM that requests may be escalated to, under a hard budget."""

    api_version: Literal["kascade.io/v1alpha1"] = pydantic.Field(
        default="kascade.io/v1alpha1", alias="apiVersion"
    )
    """kascade.io/v1alpha1."""

    kind: Literal["CloudExpert"] = "CloudExpert"
    """CloudExpert."""

    metadata: common.ObjectMeta
    """Standard object metadata."""

    spec: CloudExpertSpec
    """Desired state."""

    status: CloudExpertStatus | None = None
    """Observed state, written by the operator."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule="self.metadata.name.size() <= 63",
            message="metadata.name of a CloudExpert must be at most 63 characters",
            field_path=".metadata.name",
            check=lambda e: len(e.metadata.name) <= 63,
        ),
    )
