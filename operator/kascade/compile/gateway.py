"""RoutingPolicies + CloudExperts + pool endpoints of a namespace -> one gateway config.

Pure: the operator and embedded mode call the same function and differ only in how pool
endpoints are reached and how Secrets reach the gateway (files in a pod, environment
variables on a laptop).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from kascade.api import v1alpha1
from kascade.gateway import config as gw

# Where the operator mounts each referenced Secret in the gateway pod.
SECRETS_MOUNT = "/var/run/kascade/secrets"

# Defaults of the public providers when a CloudExpert leaves `endpoint` unset.
DEFAULT_ENDPOINTS = {
    "openai": "https://api.openai.com",
    "anthropic": "https://api.anthropic.com",
}

CredentialsMode = Literal["file", "env"]


@dataclass(frozen=True)
class CompiledGateway:
    """The gateway config of a namespace, and what could not be compiled into it."""

    config: gw.GatewayConfig
    missing: dict[str, list[str]] = field(default_factory=dict)
    """Policy name -> references it names that do not exist ("LocalModelPool/x")."""


def secret_env_var(ref: v1alpha1.SecretKeyRef) -> str:
    """The environment variable embedded mode reads a Secret key from.

    ``secretRef: {name: openai-key, key: api-key}`` -> ``KASCADE_SECRET_OPENAI_KEY_API_KEY``.
    """
    raw = f"KASCADE_SECRET_{ref.name}_{ref.key}"
    return re.sub(r"[^A-Za-z0-9]", "_", raw).upper()


def secret_file(ref: v1alpha1.SecretKeyRef, *, root: str = SECRETS_MOUNT) -> str:
    """The file a Secret key is mounted at in the gateway pod."""
    return f"{root}/{ref.name}/{ref.key}"


def expert_config(expert: v1alpha1.CloudExpert, *, credentials: CredentialsMode) -> gw.ExpertConfig:
    spec = expert.spec
    creds: gw.Credentials | None = None
    if spec.credentials is not None:
        ref = spec.credentials.secret_ref
        creds = (
            gw.Credentials(file=secret_file(ref))
            if credentials == "file"
            else gw.Credentials(env=secret_env_var(ref))
        )
    endpoint = spec.endpoint or DEFAULT_ENDPOINTS[spec.provider]
    retries = spec.retries
    breaker = spec.circuit_breaker
    return gw.ExpertConfig(
        provider=spec.provider,
        endpoint=endpoint,
        model=spec.model,
        api_version=spec.azure.api_version if spec.azure is not None else None,
        credentials=creds,
        pricing=gw.Pricing(
            input_per_million_tokens=spec.pricing.input_per_million_tokens,
            output_per_million_tokens=spec.pricing.output_per_million_tokens,
        ),
        budget=gw.BudgetConfig(
            limit_usd=spec.budget.limit_usd,
            window=spec.budget.window,
            on_exhausted=spec.budget.on_exhausted,
        ),
        rate_limits=gw.RateLimits(
            requests_per_minute=spec.rate_limits.requests_per_minute,
            tokens_per_minute=spec.rate_limits.tokens_per_minute,
            max_concurrency=spec.rate_limits.max_concurrency,
        ),
        timeouts=gw.Timeouts(
            connect_seconds=spec.timeouts.connect_seconds,
            request_seconds=spec.timeouts.request_seconds,
        ),
        retries=gw.Retries(
            max_attempts=retries.max_retries + 1,
            initial_backoff_millis=retries.initial_backoff_millis,
            max_backoff_millis=retries.max_backoff_millis,
        ),
        circuit_breaker=gw.CircuitBreakerConfig(
            # A disabled breaker is one that never trips in practice.
            failure_threshold=breaker.failure_threshold if breaker.enabled else 1_000_000,
            open_seconds=float(breaker.open_seconds),
            half_open_max_requests=breaker.half_open_probes,
        ),
        max_context_tokens=spec.max_context_tokens,
        allow_personal_data=spec.data_policy.allow_personal_data,
    )


def _target(spec: v1alpha1.routingpolicy.ConfidenceTargetSpec | None) -> gw.TargetConfig | None:
    if spec is None:
        return None
    return gw.TargetConfig(
        max_local_error_rate=spec.max_local_error_rate,
        confidence_level=spec.confidence_level,
        shadow_fraction=spec.shadow_fraction,
        max_shadow_budget_share=spec.max_shadow_budget_share,
        window_labels=spec.window_labels,
        min_labels=spec.min_labels,
        tasks=list(spec.tasks),
    )


def _degeneration(spec: v1alpha1.routingpolicy.DegenerationSpec) -> gw.DegenerationConfig:
    return gw.DegenerationConfig(
        enabled=spec.enabled,
        max_repetition=spec.max_repetition,
        max_prompt_echo=spec.max_prompt_echo,
        escalate_cut_off=spec.escalate_cut_off,
    )


def policy_config(policy: v1alpha1.RoutingPolicy) -> gw.PolicyConfig:
    spec = policy.spec
    tiers = {t.name: t.pool for t in spec.tiers or []}
    local_pool = spec.local_pool or (spec.tiers[0].pool if spec.tiers else "")
    dynamic = spec.confidence.dynamic
    return gw.PolicyConfig(
        generation=policy.metadata.generation or 1,
        local_pool=local_pool,
        experts=list(spec.experts),
        selection=spec.expert_selection,
        confidence=gw.ConfidenceConfig(
            method=spec.confidence.method,
            threshold=spec.confidence.threshold,
            dynamic=None
            if dynamic is None
            else gw.DynamicThreshold(
                min_threshold=dynamic.min_threshold,
                max_threshold=dynamic.max_threshold,
                budget_pressure=dynamic.budget_pressure,
            ),
            degeneration=_degeneration(spec.confidence.degeneration),
            target=_target(spec.confidence.target),
            combined=None
            if spec.confidence.combined is None
            else gw.CombinedScore(
                intercept=spec.confidence.combined.intercept,
                weights=dict(spec.confidence.combined.weights),
            ),
        ),
        rules=[
            gw.Rule(
                name=rule.name,
                when=gw.RuleWhen(
                    min_prompt_tokens=rule.when.min_prompt_tokens,
                    max_prompt_tokens=rule.when.max_prompt_tokens,
                    task_labels=list(rule.when.task_labels)
                    if rule.when.task_labels is not None
                    else None,
                    header=None
                    if rule.when.header is None
                    else gw.HeaderMatch(
                        name=rule.when.header.name, values=list(rule.when.header.values)
                    ),
                ),
                action=rule.action,
                target=tiers.get(rule.tier or "") if rule.action == "tier" else rule.expert,
            )
            for rule in spec.rules
        ],
        overflow=spec.overflow,
        privacy=gw.PrivacyConfig(
            detectors=list(spec.privacy.detectors),
            custom_patterns=[
                gw.CustomPattern(name=p.name, regex=p.regex) for p in spec.privacy.custom_patterns
            ],
            action=spec.privacy.action,
        ),
        cache=gw.CacheConfig(
            exact=None
            if spec.cache.exact is None
            else gw.ExactCache(ttl_seconds=float(spec.cache.exact.ttl_seconds)),
            semantic=None
            if spec.cache.semantic is None
            else gw.SemanticCache(
                threshold=spec.cache.semantic.threshold,
                ttl_seconds=float(spec.cache.semantic.ttl_seconds),
            ),
        ),
        fallback=gw.FallbackConfig(when_experts_unavailable=spec.fallback.when_experts_unavailable)
        if spec.fallback.message is None
        else gw.FallbackConfig(
            when_experts_unavailable=spec.fallback.when_experts_unavailable,
            message=spec.fallback.message,
        ),
        max_cost_per_request_usd=spec.max_cost_per_request_usd,
        audit=gw.AuditConfig(enabled=spec.audit.enabled),
    )


def missing_references(
    policy: v1alpha1.RoutingPolicy, *, pools: Iterable[str], experts: Iterable[str]
) -> list[str]:
    """References of a policy that name no existing object, as ``Kind/name``."""
    pool_names, expert_names = set(pools), set(experts)
    spec = policy.spec
    wanted_pools = [spec.local_pool] if spec.local_pool else [t.pool for t in spec.tiers or []]
    missing = [f"LocalModelPool/{p}" for p in wanted_pools if p not in pool_names]
    missing += [f"CloudExpert/{e}" for e in spec.experts if e not in expert_names]
    return missing


def gateway_config(
    *,
    namespace: str,
    pools: Iterable[v1alpha1.LocalModelPool],
    experts: Iterable[v1alpha1.CloudExpert],
    policies: Iterable[v1alpha1.RoutingPolicy],
    pool_endpoint: Callable[[v1alpha1.LocalModelPool], str],
    credentials: CredentialsMode,
    ledger_url: str | None = None,
    checkpoint_path: str | None = None,
    pool_timeout_seconds: Mapping[str, float] | None = None,
) -> CompiledGateway:
    """Compiles a namespace. Policies with missing references are left out and reported."""
    pools_by_name = {p.metadata.name: p for p in pools}
    experts_by_name = {e.metadata.name: e for e in experts if not e.spec.suspend}
    all_experts = {e.metadata.name for e in experts}
    missing: dict[str, list[str]] = {}
    compiled: dict[str, gw.PolicyConfig] = {}
    for policy in sorted(policies, key=lambda p: p.metadata.name):
        gaps = missing_references(policy, pools=pools_by_name, experts=all_experts)
        if gaps:
            missing[policy.metadata.name] = gaps
            continue
        policy_cfg = policy_config(policy)
        # A suspended expert is skipped, as if it were not listed.
        compiled[policy.metadata.name] = policy_cfg.model_copy(
            update={"experts": [e for e in policy_cfg.experts if e in experts_by_name]}
        )
    used_pools = {p.local_pool for p in compiled.values()} | {
        r.target for p in compiled.values() for r in p.rules if r.action == "tier" and r.target
    }
    used_experts = {e for p in compiled.values() for e in p.experts}
    timeouts = pool_timeout_seconds or {}
    config = gw.GatewayConfig(
        namespace=namespace,
        ledger=gw.LedgerConfig(url=ledger_url, checkpoint_path=checkpoint_path),
        pools={
            name: gw.PoolConfig(
                endpoint=pool_endpoint(pools_by_name[name]),
                model=name,
                **({"timeout_seconds": timeouts[name]} if name in timeouts else {}),
            )
            for name in sorted(used_pools)
        },
        experts={
            name: expert_config(experts_by_name[name], credentials=credentials)
            for name in sorted(used_experts)
        },
        policies=compiled,
    )
    return CompiledGateway(config=config, missing=missing)


def confidence_methods(policies: Iterable[v1alpha1.RoutingPolicy]) -> dict[str, str]:
    """Pool name -> the confidence method its policies ask for (first policy by name wins)."""
    methods: dict[str, str] = {}
    for policy in sorted(policies, key=lambda p: p.metadata.name):
        spec = policy.spec
        for pool in [spec.local_pool] if spec.local_pool else [t.pool for t in spec.tiers or []]:
            # A combined score is computed by the gateway from the signals every pool
            # sends; the pool's own figure is then the default method's.
            method = spec.confidence.method
            methods.setdefault(pool, "mean-token-prob" if method == "combined" else method)
    return methods
