"""The gateway's typed config: what the compiler produces from RoutingPolicies,
CloudExperts and pool endpoints.

JSON/YAML keys are camelCase and mirror the CRD field names, so compiling is a
near-identity mapping. The config never holds a secret: expert credentials name an
environment variable or a file that the operator wires from a Secret.
"""

from __future__ import annotations

import json
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from kascade.api import limits
from kascade.gateway.route import combined_score

Window = Literal["rolling-24h", "calendar-day", "calendar-month"]
Provider = Literal["openai", "openai-compatible", "anthropic", "azure-openai"]
Detector = Literal[
    "email",
    "phone",
    "credit-card",
    "iban",
    "ip-address",
    "ssn",
    "date-of-birth",
    "national-id",
    "secret",
]

PositiveFloat = Annotated[float, Field(gt=0)]
RetryCondition = Literal["rate-limited", "server-error", "timeout", "connection-error"]
Capability = Literal["chat", "streaming", "tools", "vision", "json-mode", "logprobs"]

# OpenAI's largest image costs 1,105 tokens at high detail on gpt-4o (85 + 170 x 6
# tiles), Anthropic's about 1,600 (1.15 megapixels / 750): 2,000 covers both.
DEFAULT_TOKENS_PER_IMAGE = 2_000
Probability = Annotated[float, Field(ge=0, le=1)]


class ConfigError(ValueError):
    """The gateway config is invalid; the message names the field and what is accepted."""


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
        use_attribute_docstrings=True,
    )


class LedgerConfig(_Model):
    url: str | None = None
    """`redis://…` for budgets and throttles shared by all replicas; None (or
    `memory://`) for one replica with an in-process ledger."""
    checkpoint_path: str | None = None
    """File the in-memory ledger checkpoints spend to, so a restart loses none."""
    reservation_ttl_seconds: float = Field(default=900.0, gt=0, le=86_400)
    """How long a reservation may stay open; one a dead replica left becomes
    worst-case spend after this. Must exceed the longest call (retries included)."""
    url_file: str | None = None
    """File holding the Redis URL (a mounted Secret), read at start; used when `url`
    is unset, so a URL with a password never lands in a ConfigMap."""
    password_file: str | None = None
    """File holding the Redis password (a mounted Secret), read at start."""


class AuthConfig(_Model):
    api_keys_file: str | None = None
    """File with one accepted API key per line (blank lines and `#` comments ignored)."""
    api_keys_env: str | None = None
    """Environment variable with accepted API keys, comma separated."""

    @model_validator(mode="after")
    def _one_source(self) -> AuthConfig:
        if (self.api_keys_file is None) == (self.api_keys_env is None):
            raise ValueError("set exactly one of apiKeysFile or apiKeysEnv")
        return self


class LimitsConfig(_Model):
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body accepted; larger bodies get 413."""


class PoolConfig(_Model):
    endpoint: str = Field(pattern=r"^https?://")
    """Base URL of the pool's OpenAI-compatible app (`/v1/chat/completions` is appended)."""
    model: str
    """Model name sent to the pool."""
    timeout_seconds: PositiveFloat = 60.0
    """Whole-request timeout for one local pass."""


class Credentials(_Model):
    env: str | None = None
    """Environment variable holding the API key."""
    file: str | None = None
    """File holding the API key (a mounted Secret); re-read when it changes."""

    @model_validator(mode="after")
    def _one_source(self) -> Credentials:
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of env or file")
        return self


class Pricing(_Model):
    input_per_million_tokens: float = Field(ge=0)
    """USD per million prompt tokens."""
    output_per_million_tokens: float = Field(ge=0)
    """USD per million completion tokens."""
    max_tokens_per_image: int = Field(default=DEFAULT_TOKENS_PER_IMAGE, ge=0, le=1_000_000)
    """Prompt tokens one image part may cost at most, counted in the worst case."""


class BudgetConfig(_Model):
    limit_usd: float = Field(alias="limitUSD", ge=0, le=limits.USD_MAX)
    """Most USD that may be spent on this expert per window."""
    window: Window = "calendar-month"
    """`rolling-24h`, `calendar-day` or `calendar-month` (calendar windows in UTC)."""
    on_exhausted: Literal["fallback-local", "reject"] = "fallback-local"
    """When the budget is spent: answer locally (degraded) or reject with 429."""
    time_zone: str = "UTC"
    """IANA time zone in which calendar windows start (e.g. `Europe/Berlin`)."""

    @model_validator(mode="after")
    def _known_zone(self) -> BudgetConfig:
        try:
            zoneinfo.ZoneInfo(self.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"timeZone {self.time_zone!r} is not a known IANA time zone "
                "(use e.g. UTC or Europe/Berlin)"
            ) from None
        return self


class RateLimits(_Model):
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)


class Timeouts(_Model):
    connect_seconds: PositiveFloat = 5.0
    """Time to establish the connection (an attempt that fails here was never sent)."""
    request_seconds: PositiveFloat = 60.0
    """Whole-call limit of a non-streamed answer (a stream is bounded by the two below)."""
    first_token_seconds: PositiveFloat | None = None
    """Streamed calls: time until the first chunk (None: requestSeconds)."""
    idle_seconds: PositiveFloat | None = None
    """Streamed calls: longest gap between two chunks (None: requestSeconds)."""


class Retries(_Model):
    max_attempts: int = Field(default=2, ge=1, le=limits.MAX_RETRIES + 1)
    """Attempts per expert, the first included; only retryable errors are retried."""
    initial_backoff_millis: int = Field(default=200, ge=0)
    max_backoff_millis: int = Field(default=5000, ge=0)
    """Also the longest upstream Retry-After the gateway waits for before moving on."""
    retry_on: list[RetryCondition] = ["rate-limited", "server-error", "timeout", "connection-error"]
    """Failures worth another attempt (each attempt reserves and is charged on its own)."""
    max_retry_after_seconds: PositiveFloat = 300.0
    """Longest upstream Retry-After honoured; longer ones are capped to this."""


class CircuitBreakerConfig(_Model):
    failure_threshold: int = Field(default=5, ge=1)
    """Consecutive failures that open the circuit."""
    open_seconds: PositiveFloat = 30.0
    """How long an open circuit rejects calls before half-opening."""
    half_open_max_requests: int = Field(default=1, ge=1)
    """Successful trial calls that close a half-open circuit (the CRD's halfOpenProbes);
    trials in flight plus trials that succeeded never exceed it."""
    window_seconds: PositiveFloat | None = None
    """Count failures within this many seconds (None: consecutive failures)."""


class ExpertConfig(_Model):
    provider: Provider
    endpoint: str = Field(pattern=limits.ENDPOINT, max_length=limits.ENDPOINT_MAX)
    """Base URL, e.g. `https://api.openai.com` (paths are added per provider)."""
    model: str
    """Model name (the deployment name for azure-openai)."""
    api_version: str | None = None
    """Azure OpenAI `api-version` (required for azure-openai)."""
    credentials: Credentials | None = None
    pricing: Pricing
    budget: BudgetConfig
    rate_limits: RateLimits = RateLimits()
    timeouts: Timeouts = Timeouts()
    retries: Retries = Retries()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    max_context_tokens: int | None = Field(default=None, ge=1)
    """Requests whose estimated prompt plus the max_tokens the expert would be sent is
    larger skip this expert."""
    allow_personal_data: bool = False
    """May receive unredacted personal data when a policy's privacy action is `allow`."""
    default_max_tokens: int = Field(default=1024, ge=1)
    """max_tokens sent when the request sets none, so the worst case is bounded."""
    capabilities: list[Capability] | None = None
    """Features the model supports; requests needing another skip it (None: any)."""

    @model_validator(mode="after")
    def _azure_version(self) -> ExpertConfig:
        if self.provider == "azure-openai" and not self.api_version:
            raise ValueError("apiVersion is required for provider azure-openai")
        return self


class DynamicThreshold(_Model):
    min_threshold: Probability
    max_threshold: Probability
    budget_pressure: float = Field(default=1.0, ge=0, le=10)
    """Weight of the budget burn rate in the threshold adjustment (0 disables it)."""

    @model_validator(mode="after")
    def _ordered(self) -> DynamicThreshold:
        if self.min_threshold > self.max_threshold:
            raise ValueError("minThreshold must be <= maxThreshold")
        return self


ConfidenceMethod = Literal[
    "mean-token-prob", "min-token-prob", "margin", "sequence-prob", "token-prob-q10", "combined"
]


class DegenerationConfig(_Model):
    """Limits of the degeneration detector (see ``route.degeneration``)."""

    enabled: bool = True
    """Escalate answers that break a limit, with reason ``degenerate``."""
    max_repetition: Probability = 0.5
    """Largest share of repeated word trigrams an answer may have."""
    max_prompt_echo: Probability = 0.9
    """Largest share of the answer's word trigrams that may come from the prompt."""
    escalate_cut_off: bool = False
    """Also escalate answers cut off at max_tokens (finish reason ``length``)."""


class CombinedScore(_Model):
    """A logistic model over confidence signals (see ``route.combined_score``)."""

    intercept: float = Field(ge=-1000, le=1000)
    weights: dict[str, Annotated[float, Field(ge=-1000, le=1000)]]
    """Feature name -> weight."""

    @model_validator(mode="after")
    def _known(self) -> CombinedScore:
        unknown = combined_score.unknown_features(self.weights)
        if unknown:
            raise ValueError(
                f"confidence.combined.weights: unknown feature(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(combined_score.FEATURE_NAMES)}, or task:<label>"
            )
        return self


class TargetConfig(_Model):
    """A declared quality target: the threshold is learned (see ``route.calibration``)."""

    max_local_error_rate: float = Field(gt=0, lt=1)
    """Highest error rate allowed among answers kept local (judged by the expert)."""
    confidence_level: float = Field(default=0.9, gt=0, lt=1)
    """Probability with which the learned threshold holds the rate (1 - delta)."""
    shadow_fraction: Probability = 0.1
    """Share of scored requests labelled (kept ones by a shadow call to the expert)."""
    max_shadow_budget_share: Probability = 0.1
    """Most of an expert's budget limit shadow calls may spend (the policy's arms together)."""
    window_labels: int = Field(default=1000, ge=10, le=100_000)
    """Labels kept per task (the most recent); older ones age out (drift)."""
    min_labels: int = Field(default=50, ge=10, le=100_000)
    """Labels needed before the learned threshold replaces the policy's."""
    tasks: list[str] = Field(default_factory=list, max_length=32)
    """Task labels (header ``x-kascade-task``) that learn their own threshold."""
    fit_score: bool = False
    """Fit the combined score's weights from the labels (``route.score_fit``); needs the
    policy's ``method: combined`` (a variant of another method learns without fitting)."""
    feedback_labels: bool = False
    """User ratings (``/v1/kascade/feedback``) of kept local answers join the labels;
    the guarantee then needs ratings as representative as a uniform sample."""


class ConfidenceConfig(_Model):
    method: ConfidenceMethod = "mean-token-prob"
    threshold: Probability = 0.7
    """Local answers below this confidence escalate."""
    dynamic: DynamicThreshold | None = None
    degeneration: DegenerationConfig = DegenerationConfig()
    combined: CombinedScore | None = None
    """Required when ``method`` is ``combined``, unless ``target.fit_score`` (then the
    starting model, optional)."""
    target: TargetConfig | None = None
    """A quality target; the threshold is then learned from labels."""

    @model_validator(mode="after")
    def _combined_given(self) -> ConfidenceConfig:
        fits = self.target is not None and self.target.fit_score
        if self.method == "combined" and self.combined is None and not fits:
            raise ValueError(
                "confidence.method 'combined' needs confidence.combined (weights), "
                "or confidence.target.fitScore to fit them from labels"
            )
        return self


class HeaderMatch(_Model):
    name: str
    """Header name (case-insensitive)."""
    values: list[str] = []
    """Values that match exactly; empty matches any value (the header must be present)."""


class RuleWhen(_Model):
    """Request features a rule matches (the RoutingPolicy's `rules[].when`); every set
    condition must hold."""

    min_prompt_tokens: int | None = Field(default=None, ge=0)
    """Matches prompts of at least this many (estimated) tokens."""
    max_prompt_tokens: int | None = Field(default=None, ge=0)
    """Matches prompts of at most this many (estimated) tokens."""
    task_labels: list[str] | None = None
    """Matches when the request header `x-kascade-task` is one of these."""
    header: HeaderMatch | None = None
    has_tools: bool | None = None
    """True matches requests that offer tools, false requests that offer none."""
    response_formats: list[Literal["text", "json_object", "json_schema"]] | None = None
    """Matches when `response_format.type` is one of these (absent counts as text)."""


class Rule(_Model):
    name: str | None = None
    """Rule name, reported in the x-kascade-rule header and audit lines (`rule_name`)."""
    when: RuleWhen
    action: Literal["local", "expert", "tier"]
    """`local`: answer locally, never escalate; `expert`: skip the local pass;
    `tier`: answer from another (larger) local pool."""
    target: str | None = None
    """Expert name (action expert; None = the policy's experts) or pool name (tier)."""


class CustomPattern(_Model):
    name: str = Field(pattern=limits.DNS1123_LABEL, max_length=limits.DNS1123_LABEL_MAX)
    regex: str


class PrivacyConfig(_Model):
    detectors: list[Detector] = []
    custom_patterns: list[CustomPattern] = []
    action: Literal["redact", "local-only", "allow"] = "redact"
    unscannable: Literal["reject", "local-only", "allow"] = "reject"
    """Binary parts (images, audio, files) under redact/local-only: refuse with 400, keep
    the request in the cluster, or send them unscanned."""


class ExactCache(_Model):
    ttl_seconds: PositiveFloat = 300.0
    max_entries: int = Field(default=10_000, ge=1)
    max_bytes: int = Field(default=64 << 20, ge=1024)
    """Most bytes of cached answers (serialized) kept; the oldest go first."""


class SemanticCache(_Model):
    threshold: Probability = 0.85
    ttl_seconds: PositiveFloat = 300.0
    max_entries: int = Field(default=2_000, ge=1)
    max_bytes: int = Field(default=64 << 20, ge=1024)
    """Most bytes of cached answers plus their vectors (16 KiB each) kept."""


class CacheConfig(_Model):
    exact: ExactCache | None = None
    semantic: SemanticCache | None = None
    shared_across_tenants: bool = False
    """Serve one tenant's cached answers to other tenants (off: one partition per tenant)."""


class FallbackConfig(_Model):
    when_experts_unavailable: Literal["local", "error"] = "local"
    message: str = "No cloud expert could answer; this is the local model's answer."


class TenantKeys(_Model):
    """Where a tenant's API keys are read from; re-read every second, so a key added
    to or deleted from the Secret works or stops working without a restart."""

    dir: str | None = None
    """Directory of a mounted Secret: every file in it holds one accepted key."""
    env: str | None = None
    """Environment variable with accepted keys, comma separated (embedded mode)."""

    @model_validator(mode="after")
    def _one_source(self) -> TenantKeys:
        if (self.dir is None) == (self.env is None):
            raise ValueError("set exactly one of dir or env")
        return self


class TenantBudgetConfig(_Model):
    limit_usd: float = Field(alias="limitUSD", ge=0, le=9_000_000)
    """Most USD this tenant's escalations may spend per window, over all experts."""
    window: Window = "calendar-month"
    """`rolling-24h`, `calendar-day` or `calendar-month` (calendar windows in UTC)."""
    on_exhausted: Literal["reject", "fallback-local"] = "reject"
    """When the tenant's budget is spent: reject with 429, or answer locally (degraded)."""


class TenantConfig(_Model):
    keys: TenantKeys
    policies: list[str] | None = None
    """Policies this tenant may call; None: every policy of the gateway."""
    budget: TenantBudgetConfig | None = None
    rate_limits: RateLimits = RateLimits()
    """Requests/min, tokens/min (prompt estimate + max_tokens) and concurrent requests,
    counted over every replica of the gateway."""
    confidence_offset: float = Field(default=0.0, ge=-0.5, le=0.5)
    """Added to each policy's confidence threshold for this tenant's requests (then
    clamped to [0, 1]): positive escalates more, negative less."""


class AuditConfig(_Model):
    enabled: bool = True
    include_prompts: bool = False
    """Audit lines also carry the messages' text and the answer's tool-call arguments,
    redacted by the policy's privacy detectors (the RoutingPolicy's
    `audit.includePrompts`)."""


class Tier(_Model):
    """One local pool of a policy's ordered tiers (the RoutingPolicy's `tiers[]`)."""

    pool: str
    """Pool that answers for this tier."""
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    """Prompts of more (estimated) tokens skip this tier; None takes any length."""


class VariantConfig(_Model):
    """One arm of a policy's A/B split (the RoutingPolicy's `variants[]`); a set field
    replaces the policy's, None keeps it."""

    name: str = Field(pattern=limits.DNS1123_LABEL, max_length=limits.DNS1123_LABEL_MAX)
    """Variant name: a metric label, an audit field and the `x-kascade-variant` header."""
    weight: int = Field(ge=1, le=10_000)
    """Relative share of callers assigned to this variant."""
    local_pool: str | None = None
    """Pool answering first instead of the policy's localPool."""
    experts: list[str] | None = None
    """Experts instead of the policy's (empty keeps this variant's requests local)."""
    selection: Literal["ordered", "cheapest"] | None = None
    """Expert selection instead of the policy's."""
    confidence: ConfidenceConfig | None = None
    """The whole confidence config of this variant (the compiler merges the overrides
    into the policy's)."""


class PolicyConfig(_Model):
    generation: int = Field(default=1, ge=0)
    """metadata.generation of the RoutingPolicy, written to audit lines."""
    local_pool: str | None = None
    """The pool that answers first, whatever the prompt's length. Exactly one of
    localPool or tiers."""
    tiers: list[Tier] | None = Field(default=None, min_length=1)
    """Ordered local tiers: a request goes to the first whose maxPromptTokens takes its
    prompt, and to the experts (reason `prompt_too_long`) when none does. Exactly one
    of localPool or tiers."""
    experts: list[str] = []
    selection: Literal["ordered", "cheapest"] = "ordered"
    confidence: ConfidenceConfig = ConfidenceConfig()
    rules: list[Rule] = []
    overflow: Literal["escalate", "wait", "reject"] = "escalate"
    overflow_wait_millis: int = Field(default=2000, ge=0)
    privacy: PrivacyConfig = PrivacyConfig()
    cache: CacheConfig = CacheConfig()
    fallback: FallbackConfig = FallbackConfig()
    max_cost_per_request_usd: float | None = Field(default=None, alias="maxCostPerRequestUSD", ge=0)
    audit: AuditConfig = AuditConfig()
    allow_anonymous: bool = False
    """Callers without an API key may use this policy even when keys are required."""
    variants: list[VariantConfig] = Field(default_factory=list, max_length=16)
    """An A/B split of callers (sticky per caller, see ``route.variants``); empty serves
    every request by this config."""

    @model_validator(mode="after")
    def _one_local_source(self) -> PolicyConfig:
        if (self.local_pool is None) == (self.tiers is None):
            raise ValueError("set exactly one of localPool or tiers")
        return self

    @model_validator(mode="after")
    def _variants_valid(self) -> PolicyConfig:
        names = [v.name for v in self.variants]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variants: names must be unique, repeated: {', '.join(repeated)}")
        if self.tiers is not None and any(v.local_pool is not None for v in self.variants):
            raise ValueError(
                "variants[].localPool is accepted only when the policy has localPool (not tiers)"
            )
        if any(v.confidence is not None and v.confidence.target != self.confidence.target
               for v in self.variants):  # fmt: skip
            raise ValueError("variants[].confidence.target must equal the policy's target")
        return self

    @model_validator(mode="after")
    def _fits_combined(self) -> PolicyConfig:
        # The policy's own method only: a variant scoring by another method shares the
        # policy's target (validator above) and learns its threshold without fitting.
        method, target = self.confidence.method, self.confidence.target
        if target is not None and target.fit_score and method != "combined":
            raise ValueError(
                "confidence.target.fitScore fits the combined score's weights: it needs "
                f"confidence.method 'combined' (got '{method}')"
            )
        return self

    def variant_policy(self, variant: VariantConfig) -> PolicyConfig:
        """This policy as one variant serves it (without variants of its own)."""
        update: dict[str, Any] = {"variants": []}
        if variant.local_pool is not None:
            update["local_pool"] = variant.local_pool
        if variant.experts is not None:
            update["experts"] = list(variant.experts)
        if variant.selection is not None:
            update["selection"] = variant.selection
        if variant.confidence is not None:
            update["confidence"] = variant.confidence
        return self.model_copy(update=update)

    def local_tiers(self) -> list[Tier]:
        """The tiers in order; a policy with localPool has one, without a prompt limit."""
        if self.tiers:
            return list(self.tiers)
        assert self.local_pool is not None  # the validator allows nothing else
        return [Tier(pool=self.local_pool)]


class GatewayConfig(_Model):
    version: Literal[1] = 1
    namespace: str = "default"
    ledger: LedgerConfig = LedgerConfig()
    auth: AuthConfig | None = None
    limits: LimitsConfig = LimitsConfig()
    pools: dict[str, PoolConfig] = {}
    experts: dict[str, ExpertConfig] = {}
    policies: dict[str, PolicyConfig] = {}
    tenants: dict[str, TenantConfig] = {}
    """Named groups of API keys, each with its own budget, rate limits and policies."""
    require_api_key: bool = False
    """Refuse callers without a valid key (401), except on policies that allow anonymous
    callers. Also implied by `auth` or any tenant."""

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        for name, tenant in self.tenants.items():
            _check_tenant(self, name=name, tenant=tenant)
        for name, policy in self.policies.items():
            where = f"policies.{name}"
            _check_local_pools(self, where=where, policy=policy)
            _check_experts(self, where=f"{where}.experts", experts=policy.experts)
            for i, rule in enumerate(policy.rules):
                _check_rule(self, where=f"{where}.rules[{i}]", rule=rule)
            for i, variant in enumerate(policy.variants):
                _check_variant(self, where=f"{where}.variants[{i}]", variant=variant)
        return self


def _check_experts(config: GatewayConfig, *, where: str, experts: list[str]) -> None:
    for expert in experts:
        if expert not in config.experts:
            raise ValueError(
                f"{where}: unknown expert {expert!r}; known experts: {sorted(config.experts)}"
            )


def _check_variant(config: GatewayConfig, *, where: str, variant: VariantConfig) -> None:
    if variant.local_pool is not None and variant.local_pool not in config.pools:
        raise ValueError(
            f"{where}.localPool: unknown pool {variant.local_pool!r}; "
            f"known pools: {sorted(config.pools)}"
        )
    _check_experts(config, where=f"{where}.experts", experts=variant.experts or [])


def _check_tenant(config: GatewayConfig, *, name: str, tenant: TenantConfig) -> None:
    if not name or len(name) > 200 or any(c in name for c in "{}|: \t\r\n/"):
        raise ValueError(
            f"tenants.{name!r}: a tenant name must be 1-200 characters without "
            "'{', '}', '|', ':', '/' or whitespace (Kubernetes object names qualify)"
        )
    for policy in tenant.policies or []:
        if policy not in config.policies:
            raise ValueError(
                f"tenants.{name}.policies: unknown policy {policy!r}; "
                f"known policies: {sorted(config.policies)}"
            )


def _check_local_pools(config: GatewayConfig, *, where: str, policy: PolicyConfig) -> None:
    named = [("localPool", policy.local_pool)] if policy.local_pool is not None else []
    named += [(f"tiers[{i}].pool", tier.pool) for i, tier in enumerate(policy.tiers or [])]
    for field, pool in named:
        if pool not in config.pools:
            raise ValueError(
                f"{where}.{field}: unknown pool {pool!r}; known pools: {sorted(config.pools)}"
            )


def _check_rule(config: GatewayConfig, *, where: str, rule: Rule) -> None:
    if rule.action == "tier":
        if rule.target not in config.pools:
            raise ValueError(
                f"{where}.target: action tier needs a known pool, got {rule.target!r}; "
                f"known pools: {sorted(config.pools)}"
            )
    elif (
        rule.action == "expert" and rule.target is not None and (rule.target not in config.experts)
    ):
        raise ValueError(
            f"{where}.target: unknown expert {rule.target!r}; "
            f"known experts: {sorted(config.experts)}"
        )


def parse_config(data: Any, *, source: str = "config") -> GatewayConfig:
    """Validates already-parsed config data; raises ConfigError naming the bad field."""
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source=source)) from None


def load_config(path: str | Path) -> GatewayConfig:
    """Reads a YAML or JSON gateway config file; raises ConfigError naming the bad field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the gateway config: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML/JSON: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return parse_config(data, source=str(path))


def _describe(exc: ValidationError, *, source: str) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in err["loc"]) or "<top level>"
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"{loc}: {err['msg']}{shown}")
    return f"{source}: invalid gateway config:\n  " + "\n  ".join(lines)
