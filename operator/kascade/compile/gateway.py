"""RoutingPolicies + CloudExperts + pool endpoints of a namespace -> one gateway config.

Pure: the operator and embedded mode call the same function and differ only in how pool
endpoints are reached and how Secrets reach the gateway (files in a pod, environment
variables on a laptop).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic

from kascade.api import v1alpha1
from kascade.api.v1alpha1 import problems as problems_mod
from kascade.gateway import config as gw

# Where the operator mounts each referenced Secret in the gateway pod.
SECRETS_MOUNT = "/var/run/kascade/secrets"
# Where each Tenant's keys Secret is mounted whole: one file per key.
TENANTS_MOUNT = "/var/run/kascade/tenants"
# Where the Redis Secret (keys `url` and optionally `password`) is mounted.
REDIS_MOUNT = "/var/run/kascade/redis"

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
    invalid: dict[str, list[str]] = field(default_factory=dict)
    """``Kind/name`` -> why that object could not be compiled, one ``field: reason`` line
    each. Such an object is left out; its neighbours are compiled without it."""


def describe_failure(
    error: Exception,
    *,
    root: str = "spec",
    within: type[pydantic.BaseModel] | None = None,
    source: Mapping[str, Any] | None = None,
) -> list[str]:
    """``field: reason`` lines for a compile failure, the field named as in the object.

    The config is built bottom-up, so a failure names only the innermost config model
    (``BudgetConfig``) and its field; ``within`` (the outermost one, e.g.
    ``gw.ExpertConfig``) is searched for where that model sits (``budget``), and the
    config's camelCase names mirror the CRD's. Inside a list, the index is the one of the
    item of ``source`` (the object's spec) that holds the rejected value.
    """
    if not isinstance(error, pydantic.ValidationError):
        return [f"{root}: {type(error).__name__}: {error}"]
    prefix = _path_to(within, error.title) if within is not None else None
    lines = []
    for item in error.errors(include_url=False):
        model = _model_named(within, error.title) if within is not None else None
        loc = [_wire_name(model, part) for part in item["loc"]]
        got = item.get("input")
        path = problems_mod.field_path(_indexed([*(prefix or []), *loc], source or {}, got))
        shown = (
            f" (got {got!r})" if isinstance(got, int | float | str) and len(str(got)) <= 80 else ""
        )
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{root}.{path}: {message}{shown}" if path else f"{root}: {message}")
    return lines


def _indexed(path: list[int | str], source: Mapping[str, Any], got: object) -> list[int | str]:
    """``path`` with each list marker (``"[]"``) replaced by the index in ``source`` of the
    item whose rest of the path equals ``got`` (or left out when none does)."""
    if "[]" not in path:
        return path
    at = path.index("[]")
    items = _lookup(source, path[:at])
    for index, item in enumerate(items if isinstance(items, list) else []):
        rest = _indexed(path[at + 1 :], item, got) if isinstance(item, Mapping) else []
        if _lookup(item, rest) == got:
            return [*path[:at], index, *rest]
    return [p for p in path if p != "[]"]


def _lookup(value: Any, path: Sequence[int | str]) -> Any:
    for part in path:
        if isinstance(value, Mapping) and isinstance(part, str):
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            return None
    return value


def _wire_name(model: type[pydantic.BaseModel] | None, part: int | str) -> int | str:
    if model is None or not isinstance(part, str) or part not in model.model_fields:
        return part
    return model.model_fields[part].alias or part


def _models_under(
    model: type[pydantic.BaseModel], path: list[str]
) -> Iterable[tuple[type[pydantic.BaseModel], list[str]]]:
    """Every config model reachable from ``model``, with the wire path to it."""
    yield model, path
    for name, info in model.model_fields.items():
        listed = any(typing.get_origin(a) is list for a in _flatten(info.annotation))
        for arg in _flatten(info.annotation):
            if isinstance(arg, type) and issubclass(arg, pydantic.BaseModel):
                step = [info.alias or name, "[]"] if listed else [info.alias or name]
                yield from _models_under(arg, [*path, *step])


def _flatten(annotation: object) -> Iterable[object]:
    yield annotation
    for arg in typing.get_args(annotation):
        yield from _flatten(arg)


def _path_to(within: type[pydantic.BaseModel], title: str) -> list[str] | None:
    return next((path for m, path in _models_under(within, []) if m.__name__ == title), None)


def _model_named(within: type[pydantic.BaseModel], title: str) -> type[pydantic.BaseModel] | None:
    return next((m for m, _ in _models_under(within, []) if m.__name__ == title), None)


def secret_env_var(ref: v1alpha1.SecretKeyRef) -> str:
    """The environment variable embedded mode reads a Secret key from.

    ``secretRef: {name: openai-key, key: api-key}`` -> ``KASCADE_SECRET_OPENAI_KEY_API_KEY``.
    """
    raw = f"KASCADE_SECRET_{ref.name}_{ref.key}"
    return re.sub(r"[^A-Za-z0-9]", "_", raw).upper()


def secret_file(ref: v1alpha1.SecretKeyRef, *, root: str = SECRETS_MOUNT) -> str:
    """The file a Secret key is mounted at in the gateway pod."""
    return f"{root}/{ref.name}/{ref.key}"


def tenant_keys_env(secret: str) -> str:
    """The environment variable embedded mode reads a Tenant's keys from (comma separated).

    ``secretRef: {name: team-a-keys}`` -> ``KASCADE_TENANT_KEYS_TEAM_A_KEYS``.
    """
    return re.sub(r"[^A-Za-z0-9]", "_", f"KASCADE_TENANT_KEYS_{secret}").upper()


def tenant_config(
    tenant: v1alpha1.Tenant, *, credentials: CredentialsMode, policies: Iterable[str]
) -> gw.TenantConfig:
    """A Tenant as the gateway sees it; policies it names that are not served are dropped."""
    spec = tenant.spec
    secret = spec.keys.secret_ref.name
    keys = (
        gw.TenantKeys(dir=f"{TENANTS_MOUNT}/{tenant.metadata.name}")
        if credentials == "file"
        else gw.TenantKeys(env=tenant_keys_env(secret))
    )
    served = set(policies)
    return gw.TenantConfig(
        keys=keys,
        policies=None if spec.policies is None else [p for p in spec.policies if p in served],
        budget=None
        if spec.budget is None
        else gw.TenantBudgetConfig(
            limit_usd=spec.budget.limit_usd,
            window=spec.budget.window,
            on_exhausted=spec.budget.on_exhausted,
        ),
        rate_limits=gw.RateLimits(
            requests_per_minute=spec.rate_limits.requests_per_minute,
            tokens_per_minute=spec.rate_limits.tokens_per_minute,
            max_concurrency=spec.rate_limits.max_concurrency,
        ),
        confidence_offset=spec.confidence_offset,
    )


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
            max_tokens_per_image=spec.pricing.max_tokens_per_image,
        ),
        budget=gw.BudgetConfig(
            limit_usd=spec.budget.limit_usd,
            window=spec.budget.window,
            on_exhausted=spec.budget.on_exhausted,
            time_zone=spec.budget.time_zone,
        ),
        rate_limits=gw.RateLimits(
            requests_per_minute=spec.rate_limits.requests_per_minute,
            tokens_per_minute=spec.rate_limits.tokens_per_minute,
            max_concurrency=spec.rate_limits.max_concurrency,
        ),
        timeouts=gw.Timeouts(
            connect_seconds=spec.timeouts.connect_seconds,
            request_seconds=spec.timeouts.request_seconds,
            first_token_seconds=spec.timeouts.first_token_seconds,
            idle_seconds=spec.timeouts.idle_seconds,
        ),
        retries=gw.Retries(
            max_attempts=retries.max_retries + 1,
            initial_backoff_millis=retries.initial_backoff_millis,
            max_backoff_millis=retries.max_backoff_millis,
            retry_on=list(retries.retry_on),
            max_retry_after_seconds=float(retries.max_retry_after_seconds),
        ),
        circuit_breaker=gw.CircuitBreakerConfig(
            # A disabled breaker is one that never trips in practice.
            failure_threshold=breaker.failure_threshold if breaker.enabled else 1_000_000,
            open_seconds=float(breaker.open_seconds),
            half_open_max_requests=breaker.half_open_probes,
            window_seconds=float(breaker.window_seconds),
        ),
        max_context_tokens=spec.max_context_tokens,
        allow_personal_data=spec.data_policy.allow_personal_data,
        capabilities=list(spec.capabilities),
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
        fit_score=spec.fit_score,
        feedback_labels=spec.feedback_labels,
    )


def _degeneration(spec: v1alpha1.routingpolicy.DegenerationSpec) -> gw.DegenerationConfig:
    return gw.DegenerationConfig(
        enabled=spec.enabled,
        max_repetition=spec.max_repetition,
        max_prompt_echo=spec.max_prompt_echo,
        escalate_cut_off=spec.escalate_cut_off,
    )


def _tiers(tiers: Sequence[v1alpha1.routingpolicy.Tier]) -> list[gw.Tier]:
    return [gw.Tier(pool=t.pool, max_prompt_tokens=t.max_prompt_tokens) for t in tiers]


def _confidence(spec: v1alpha1.routingpolicy.ConfidenceSpec) -> gw.ConfidenceConfig:
    dynamic = spec.dynamic
    return gw.ConfidenceConfig(
        method=spec.method,
        threshold=spec.threshold,
        dynamic=None
        if dynamic is None
        else gw.DynamicThreshold(
            min_threshold=dynamic.min_threshold,
            max_threshold=dynamic.max_threshold,
            budget_pressure=dynamic.budget_pressure,
        ),
        degeneration=_degeneration(spec.degeneration),
        target=_target(spec.target),
        combined=None
        if spec.combined is None
        else gw.CombinedScore(
            intercept=spec.combined.intercept, weights=dict(spec.combined.weights)
        ),
    )


def _variant_confidence(
    base: v1alpha1.routingpolicy.ConfidenceSpec,
    override: v1alpha1.routingpolicy.ConfidenceOverride | None,
) -> gw.ConfidenceConfig | None:
    """The policy's confidence with the variant's set fields in place of its own."""
    if override is None:
        return None
    changed = {
        "method": override.method,
        "threshold": override.threshold,
        "dynamic": override.dynamic,
        "combined": override.combined,
        "degeneration": override.degeneration,
    }
    return _confidence(base.model_copy(update={k: v for k, v in changed.items() if v is not None}))


def _variants(spec: v1alpha1.RoutingPolicySpec) -> list[gw.VariantConfig]:
    return [
        gw.VariantConfig(
            name=v.name,
            weight=v.weight,
            local_pool=v.overrides.local_pool,
            experts=None if v.overrides.experts is None else list(v.overrides.experts),
            selection=v.overrides.expert_selection,
            confidence=_variant_confidence(spec.confidence, v.overrides.confidence),
        )
        for v in spec.variants
    ]


def _rule(rule: v1alpha1.routingpolicy.Rule, tiers: Mapping[str, str]) -> gw.Rule:
    when = rule.when
    return gw.Rule(
        name=rule.name,
        when=gw.RuleWhen(
            min_prompt_tokens=when.min_prompt_tokens,
            max_prompt_tokens=when.max_prompt_tokens,
            task_labels=list(when.task_labels) if when.task_labels is not None else None,
            header=None
            if when.header is None
            else gw.HeaderMatch(name=when.header.name, values=list(when.header.values)),
            has_tools=when.has_tools,
            response_formats=None if when.response_formats is None else list(when.response_formats),
        ),
        action=rule.action,
        target=tiers.get(rule.tier or "") if rule.action == "tier" else rule.expert,
    )


def _privacy(privacy: v1alpha1.routingpolicy.PrivacySpec) -> gw.PrivacyConfig:
    return gw.PrivacyConfig(
        detectors=list(privacy.detectors),
        custom_patterns=[
            gw.CustomPattern(name=p.name, regex=p.regex) for p in privacy.custom_patterns
        ],
        action=privacy.action,
        unscannable=privacy.unscannable,
    )


def _cache(cache: v1alpha1.routingpolicy.CacheSpec) -> gw.CacheConfig:
    return gw.CacheConfig(
        exact=None
        if cache.exact is None
        else gw.ExactCache(ttl_seconds=float(cache.exact.ttl_seconds)),
        semantic=None
        if cache.semantic is None
        else gw.SemanticCache(
            threshold=cache.semantic.threshold, ttl_seconds=float(cache.semantic.ttl_seconds)
        ),
        shared_across_tenants=cache.shared_across_tenants,
    )


def _fallback(fallback: v1alpha1.routingpolicy.FallbackSpec) -> gw.FallbackConfig:
    if fallback.message is None:
        return gw.FallbackConfig(when_experts_unavailable=fallback.when_experts_unavailable)
    return gw.FallbackConfig(
        when_experts_unavailable=fallback.when_experts_unavailable, message=fallback.message
    )


def policy_config(policy: v1alpha1.RoutingPolicy) -> gw.PolicyConfig:
    spec = policy.spec
    tiers = {t.name: t.pool for t in spec.tiers or []}
    return gw.PolicyConfig(
        generation=policy.metadata.generation or 1,
        local_pool=spec.local_pool,
        tiers=_tiers(spec.tiers) if spec.tiers else None,
        experts=list(spec.experts),
        selection=spec.expert_selection,
        confidence=_confidence(spec.confidence),
        variants=_variants(spec),
        rules=[_rule(rule, tiers) for rule in spec.rules],
        overflow=spec.overflow,
        privacy=_privacy(spec.privacy),
        cache=_cache(spec.cache),
        fallback=_fallback(spec.fallback),
        max_cost_per_request_usd=spec.max_cost_per_request_usd,
        audit=gw.AuditConfig(
            enabled=spec.audit.enabled, include_prompts=spec.audit.include_prompts
        ),
        allow_anonymous=spec.allow_anonymous,
    )


def missing_references(
    policy: v1alpha1.RoutingPolicy, *, pools: Iterable[str], experts: Iterable[str]
) -> list[str]:
    """References of a policy that name no existing object, as ``Kind/name``."""
    pool_names, expert_names = set(pools), set(experts)
    spec = policy.spec
    wanted_pools = [spec.local_pool] if spec.local_pool else [t.pool for t in spec.tiers or []]
    wanted_pools += [v.overrides.local_pool for v in spec.variants if v.overrides.local_pool]
    wanted_experts = [*spec.experts, *(e for v in spec.variants for e in v.overrides.experts or [])]
    missing = [f"LocalModelPool/{p}" for p in dict.fromkeys(wanted_pools) if p not in pool_names]
    missing += [f"CloudExpert/{e}" for e in dict.fromkeys(wanted_experts) if e not in expert_names]
    return missing


def expert_failures(expert: v1alpha1.CloudExpert) -> list[str]:
    """Why an expert cannot be compiled into a gateway config (empty when it can)."""
    try:
        expert_config(expert, credentials="file")
    except Exception as error:  # one object's failure, whatever it is, stays its own
        return describe_failure(error, within=gw.ExpertConfig, source=expert.to_manifest()["spec"])
    return []


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
    unparsed_experts: Iterable[str] = (),
    tenants: Iterable[v1alpha1.Tenant] = (),
    require_api_key: bool = False,
    redis_secret: bool = False,
) -> CompiledGateway:
    """Compiles a namespace. A policy with missing references, and any object that cannot
    be compiled, is left out and reported; every other object is compiled as usual.

    ``unparsed_experts`` names experts that exist but could not be read (the caller
    reports them): policies listing them are compiled without them, as if suspended.
    ``require_api_key`` refuses callers without a Tenant's key (the operator sets it);
    ``redis_secret`` reads the Redis URL and password from the mounted Redis Secret.
    """
    pools_by_name = {p.metadata.name: p for p in pools}
    all_experts = {e.metadata.name for e in experts} | set(unparsed_experts)
    invalid: dict[str, list[str]] = {}
    expert_cfgs = _expert_configs(experts, credentials=credentials, invalid=invalid)
    compiled, missing = _policy_configs(
        policies, pools=pools_by_name, experts=all_experts, usable=expert_cfgs, invalid=invalid
    )

    def assemble(chosen: dict[str, gw.PolicyConfig]) -> gw.GatewayConfig:
        return _assemble(
            namespace=namespace,
            policies=chosen,
            pools=pools_by_name,
            experts=expert_cfgs,
            pool_endpoint=pool_endpoint,
            ledger=ledger,
            timeouts=pool_timeout_seconds or {},
        )

    ledger = gw.LedgerConfig(url=ledger_url, checkpoint_path=checkpoint_path)
    if redis_secret:
        ledger = gw.LedgerConfig(
            url_file=f"{REDIS_MOUNT}/url", password_file=f"{REDIS_MOUNT}/password"
        )
    config = _isolate_cross_object_failures(compiled, assemble=assemble, invalid=invalid)
    # Tenants name only policies that are served (the others are dropped from theirs).
    access = {
        t.metadata.name: tenant_config(t, credentials=credentials, policies=config.policies)
        for t in sorted(tenants, key=lambda t: t.metadata.name)
    }
    config = config.model_copy(update={"tenants": access, "require_api_key": require_api_key})
    return CompiledGateway(config=config, missing=missing, invalid=invalid)


def _expert_configs(
    experts: Iterable[v1alpha1.CloudExpert],
    *,
    credentials: CredentialsMode,
    invalid: dict[str, list[str]],
) -> dict[str, gw.ExpertConfig]:
    """Every expert that compiles; the others are reported in ``invalid``."""
    configs: dict[str, gw.ExpertConfig] = {}
    # A suspended expert is skipped, as if it were not listed.
    for expert in sorted(experts, key=lambda e: e.metadata.name):
        if expert.spec.suspend:
            continue
        try:
            configs[expert.metadata.name] = expert_config(expert, credentials=credentials)
        except Exception as error:  # isolate: the expert is left out, policies go on
            invalid[f"CloudExpert/{expert.metadata.name}"] = describe_failure(
                error, within=gw.ExpertConfig, source=expert.to_manifest()["spec"]
            )
    return configs


def _policy_configs(
    policies: Iterable[v1alpha1.RoutingPolicy],
    *,
    pools: Mapping[str, v1alpha1.LocalModelPool],
    experts: set[str],
    usable: Mapping[str, gw.ExpertConfig],
    invalid: dict[str, list[str]],
) -> tuple[dict[str, gw.PolicyConfig], dict[str, list[str]]]:
    """Every policy that compiles, and name -> missing references of those that do not
    resolve; the ones that fail otherwise are reported in ``invalid``."""
    compiled: dict[str, gw.PolicyConfig] = {}
    missing: dict[str, list[str]] = {}
    for policy in sorted(policies, key=lambda p: p.metadata.name):
        name = policy.metadata.name
        gaps = missing_references(policy, pools=pools, experts=experts)
        if gaps:
            missing[name] = gaps
            continue
        try:
            policy_cfg = policy_config(policy)
        except Exception as error:  # isolate: the policy is left out, the others serve
            invalid[f"RoutingPolicy/{name}"] = describe_failure(
                error, within=gw.PolicyConfig, source=policy.to_manifest()["spec"]
            )
            continue
        dropped = _rules_on_dropped_experts(policy, usable=usable)
        if dropped:
            invalid[f"RoutingPolicy/{name}"] = dropped
            continue
        compiled[name] = without_unusable_experts(policy_cfg, usable=usable)
    return compiled, missing


def without_unusable_experts(
    policy: gw.PolicyConfig, *, usable: Mapping[str, gw.ExpertConfig]
) -> gw.PolicyConfig:
    """The policy and its variants without suspended or uncompilable experts."""
    variants = [
        v
        if v.experts is None
        else v.model_copy(update={"experts": [e for e in v.experts if e in usable]})
        for v in policy.variants
    ]
    return policy.model_copy(
        update={"experts": [e for e in policy.experts if e in usable], "variants": variants}
    )


def _rules_on_dropped_experts(
    policy: v1alpha1.RoutingPolicy, *, usable: Mapping[str, gw.ExpertConfig]
) -> list[str]:
    """Rules that send requests straight to an expert that is suspended or left out."""
    return [
        f"spec.rules[{i}].expert: {rule.expert!r} is suspended or cannot be compiled, so "
        "this rule has no target (resume or fix the expert, or remove rules[].expert)"
        for i, rule in enumerate(policy.spec.rules)
        if rule.action == "expert" and rule.expert is not None and rule.expert not in usable
    ]


def _isolate_cross_object_failures(
    compiled: dict[str, gw.PolicyConfig],
    *,
    assemble: Callable[[dict[str, gw.PolicyConfig]], gw.GatewayConfig],
    invalid: dict[str, list[str]],
) -> gw.GatewayConfig:
    """The namespace config; a policy that fails the config's cross-object checks (rule
    targets, for instance) is found by compiling it alone, reported and left out."""
    try:
        return assemble(compiled)
    except pydantic.ValidationError:
        pass
    kept: dict[str, gw.PolicyConfig] = {}
    for name, policy_cfg in compiled.items():
        try:
            assemble({name: policy_cfg})
        except pydantic.ValidationError as error:
            invalid[f"RoutingPolicy/{name}"] = describe_failure(error, root="spec")
            continue
        kept[name] = policy_cfg
    return assemble(kept)


def _assemble(
    *,
    namespace: str,
    policies: dict[str, gw.PolicyConfig],
    pools: Mapping[str, v1alpha1.LocalModelPool],
    experts: Mapping[str, gw.ExpertConfig],
    pool_endpoint: Callable[[v1alpha1.LocalModelPool], str],
    ledger: gw.LedgerConfig,
    timeouts: Mapping[str, float],
) -> gw.GatewayConfig:
    served = [
        served
        for p in policies.values()
        for served in [p, *(p.variant_policy(v) for v in p.variants)]
    ]
    used_pools = {t.pool for p in served for t in p.local_tiers()} | {
        r.target for p in served for r in p.rules if r.action == "tier" and r.target
    }
    used_experts = {e for p in served for e in p.experts}
    return gw.GatewayConfig(
        namespace=namespace,
        ledger=ledger,
        pools={
            name: gw.PoolConfig(
                endpoint=pool_endpoint(pools[name]),
                model=name,
                **({"timeout_seconds": timeouts[name]} if name in timeouts else {}),
            )
            for name in sorted(used_pools)
            if name in pools
        },
        experts={name: experts[name] for name in sorted(used_experts)},
        policies=policies,
    )


def confidence_methods(policies: Iterable[v1alpha1.RoutingPolicy]) -> dict[str, str]:
    """Pool name -> the confidence method its policies ask for (first policy by name wins)."""
    methods: dict[str, str] = {}
    for policy in sorted(policies, key=lambda p: p.metadata.name):
        spec = policy.spec
        pools = [spec.local_pool] if spec.local_pool else [t.pool for t in spec.tiers or []]
        arms = [(pool, spec.confidence.method) for pool in pools]
        for v in spec.variants:  # a variant's own pool serves with the variant's method
            override = v.overrides.confidence
            if v.overrides.local_pool is not None:
                method = (override.method if override else None) or spec.confidence.method
                arms.append((v.overrides.local_pool, method))
        for pool, method in arms:
            # A combined score is computed by the gateway from the signals every pool
            # sends; the pool's own figure is then the default method's.
            methods.setdefault(pool, "mean-token-prob" if method == "combined" else method)
    return methods
