"""The gateway's typed config: what the compiler produces from RoutingPolicies,
CloudExperts and pool endpoints.

JSON/YAML keys are camelCase and mirror the CRD field names, so compiling is a
near-identity mapping. The config never holds a secret: expert credentials name an
environment variable or a file that the operator wires from a Secret.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from kascade.api import limits

Window = Literal["rolling-24h", "calendar-day", "calendar-month"]
Provider = Literal["openai", "openai-compatible", "anthropic", "azure-openai"]
Detector = Literal["email", "phone", "credit-card", "iban", "ip-address"]

PositiveFloat = Annotated[float, Field(gt=0)]
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


class BudgetConfig(_Model):
    limit_usd: float = Field(alias="limitUSD", ge=0, le=limits.USD_MAX)
    """Most USD that may be spent on this expert per window."""
    window: Window = "calendar-month"
    """`rolling-24h`, `calendar-day` or `calendar-month` (calendar windows in UTC)."""
    on_exhausted: Literal["fallback-local", "reject"] = "fallback-local"
    """When the budget is spent: answer locally (degraded) or reject with 429."""


class RateLimits(_Model):
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)


class Timeouts(_Model):
    connect_seconds: PositiveFloat = 5.0
    request_seconds: PositiveFloat = 60.0


class Retries(_Model):
    max_attempts: int = Field(default=2, ge=1, le=limits.MAX_RETRIES + 1)
    """Attempts per expert, the first included; only retryable errors are retried."""
    initial_backoff_millis: int = Field(default=200, ge=0)
    max_backoff_millis: int = Field(default=5000, ge=0)
    """Also the longest upstream Retry-After the gateway waits for before moving on."""


class CircuitBreakerConfig(_Model):
    failure_threshold: int = Field(default=5, ge=1)
    """Consecutive failures that open the circuit."""
    open_seconds: PositiveFloat = 30.0
    """How long an open circuit rejects calls before half-opening."""
    half_open_max_requests: int = Field(default=1, ge=1)
    """Trial calls allowed while half-open."""


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
    """Requests whose estimated prompt is longer skip this expert."""
    allow_personal_data: bool = False
    """May receive unredacted personal data when a policy's privacy action is `allow`."""
    default_max_tokens: int = Field(default=1024, ge=1)
    """max_tokens sent when the request sets none, so the worst case is bounded."""

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


class ConfidenceConfig(_Model):
    method: Literal["mean-token-prob", "min-token-prob", "margin"] = "mean-token-prob"
    threshold: Probability = 0.7
    """Local answers below this confidence escalate."""
    dynamic: DynamicThreshold | None = None


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
    """Rule name, reported in audit lines (`rule_name`)."""
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


class ExactCache(_Model):
    ttl_seconds: PositiveFloat = 300.0
    max_entries: int = Field(default=10_000, ge=1)


class SemanticCache(_Model):
    threshold: Probability = 0.85
    ttl_seconds: PositiveFloat = 300.0
    max_entries: int = Field(default=2_000, ge=1)


class CacheConfig(_Model):
    exact: ExactCache | None = None
    semantic: SemanticCache | None = None


class FallbackConfig(_Model):
    when_experts_unavailable: Literal["local", "error"] = "local"
    message: str = "No cloud expert could answer; this is the local model's answer."


class AuditConfig(_Model):
    enabled: bool = True
    include_prompts: bool = False
    """Audit lines also carry the messages' text and the answer's tool-call arguments,
    redacted by the policy's privacy detectors (the RoutingPolicy's
    `audit.includePrompts`)."""


class PolicyConfig(_Model):
    generation: int = Field(default=1, ge=0)
    """metadata.generation of the RoutingPolicy, written to audit lines."""
    local_pool: str
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


class GatewayConfig(_Model):
    version: Literal[1] = 1
    namespace: str = "default"
    ledger: LedgerConfig = LedgerConfig()
    auth: AuthConfig | None = None
    limits: LimitsConfig = LimitsConfig()
    pools: dict[str, PoolConfig] = {}
    experts: dict[str, ExpertConfig] = {}
    policies: dict[str, PolicyConfig] = {}

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        for name, policy in self.policies.items():
            where = f"policies.{name}"
            if policy.local_pool not in self.pools:
                raise ValueError(
                    f"{where}.localPool: unknown pool {policy.local_pool!r}; "
                    f"known pools: {sorted(self.pools)}"
                )
            for expert in policy.experts:
                if expert not in self.experts:
                    raise ValueError(
                        f"{where}.experts: unknown expert {expert!r}; "
                        f"known experts: {sorted(self.experts)}"
                    )
            for i, rule in enumerate(policy.rules):
                _check_rule(self, where=f"{where}.rules[{i}]", rule=rule)
        return self


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
