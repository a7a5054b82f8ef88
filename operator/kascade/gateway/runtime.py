"""A loaded config compiled for serving: regexes, caches, expert states, API keys.

Everything that can be done once per config is done here, not per request. A request
holds the Runtime it started with, so a reload never changes a request mid-flight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from kascade.gateway import config as config_mod
from kascade.gateway.cache import memory as cache_mod
from kascade.gateway.experts import escalation
from kascade.gateway.privacy import redaction as privacy
from kascade.gateway.tenants import access
from kascade.gateway.tenants import keys as keys_mod


@dataclass(frozen=True)
class LocalTier:
    """One local tier of a policy, compiled: the pool's name (metric label, audit) and
    the pool's config (what the local pass calls)."""

    name: str
    pool: config_mod.PoolConfig
    max_prompt_tokens: int | None
    """Prompts of more (estimated) tokens skip this tier; None takes any length."""


@dataclass
class PolicyRuntime:
    """One policy, compiled."""

    name: str
    config: config_mod.PolicyConfig
    tiers: list[LocalTier]
    """The local tiers in the order they are tried (one for a policy with localPool)."""
    scanner: privacy.Scanner
    experts: list[escalation.ExpertState]
    exact: cache_mod.ExactCache | None
    semantic: cache_mod.SemanticCache | None
    max_cost_nanos: int | None
    variants: list[Variant] = field(default_factory=list)
    """The A/B arms of the policy (empty: none); each serves with its own config."""
    variant: str | None = None
    """The arm this runtime serves, on a variant's runtime (None on the policy's own)."""


@dataclass(frozen=True)
class Variant:
    """One arm of a policy's A/B split, compiled: its weight and how it serves."""

    name: str
    weight: int
    policy: PolicyRuntime


@dataclass
class Runtime:
    """A whole gateway config, compiled."""

    config: config_mod.GatewayConfig
    policies: dict[str, PolicyRuntime]
    models_body: bytes
    tenants: dict[str, access.TenantRuntime] = field(default_factory=dict)
    keyring: keys_mod.KeyRing = field(default_factory=keys_mod.KeyRing)
    """Swapped in place by the key watcher when a Secret's keys change."""
    keys_required: bool = False
    anonymous_policies: frozenset[str] = frozenset()


def build(
    *,
    config: config_mod.GatewayConfig,
    previous: Runtime | None,
    experts: dict[str, escalation.ExpertState],
) -> Runtime:
    """Compiles a config. `experts` (breakers) persists across reloads and is updated
    in place; caches survive when a policy's generation and cache settings are unchanged."""
    for name, expert_config in config.experts.items():
        state = experts.get(name)
        if state is None:
            experts[name] = escalation.ExpertState.build(name=name, config=expert_config)
        elif state.config != expert_config:
            state.reconfigure(config=expert_config)
    policies: dict[str, PolicyRuntime] = {}
    for name, policy in config.policies.items():
        old = previous.policies.get(name) if previous is not None else None
        exact, semantic = _caches(policy, old=old)
        try:
            scanner = privacy.Scanner(privacy=policy.privacy)
        except config_mod.ConfigError as exc:
            raise config_mod.ConfigError(f"policies.{name}.{exc}") from None
        base = _policy_runtime(
            name, policy, config=config, experts=experts, scanner=scanner, caches=(exact, semantic)
        )
        # The arms share the policy's scanner and caches (their answers are kept apart
        # by the cache partition, which names the arm).
        base.variants = [
            Variant(
                name=v.name,
                weight=v.weight,
                policy=_policy_runtime(
                    name,
                    policy.variant_policy(v),
                    config=config,
                    experts=experts,
                    scanner=scanner,
                    caches=(exact, semantic),
                    variant=v.name,
                ),
            )
            for v in policy.variants
        ]
        policies[name] = base
    models = {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "kascade"}
            for name in sorted(config.policies)
        ],
    }
    return Runtime(
        config=config,
        policies=policies,
        models_body=json.dumps(models).encode(),
        tenants=access.build_tenants(config),
        keyring=keys_mod.build_ring(tenants=config.tenants, auth=config.auth),
        keys_required=access.keys_required(config),
        anonymous_policies=frozenset(n for n, p in config.policies.items() if p.allow_anonymous),
    )


def _caches(
    policy: config_mod.PolicyConfig, *, old: PolicyRuntime | None
) -> tuple[cache_mod.ExactCache | None, cache_mod.SemanticCache | None]:
    """The policy's caches: the previous runtime's while its generation and cache
    settings are unchanged, else new ones."""
    if (
        old is not None
        and old.config.cache == policy.cache
        and old.config.generation == policy.generation
    ):
        return old.exact, old.semantic
    exact = semantic = None
    if policy.cache.exact is not None:
        exact = cache_mod.ExactCache(
            ttl_seconds=policy.cache.exact.ttl_seconds,
            max_entries=policy.cache.exact.max_entries,
            max_bytes=policy.cache.exact.max_bytes,
        )
    if policy.cache.semantic is not None:
        semantic = cache_mod.SemanticCache(config=policy.cache.semantic)
    return exact, semantic


def _policy_runtime(
    name: str,
    policy: config_mod.PolicyConfig,
    *,
    config: config_mod.GatewayConfig,
    experts: dict[str, escalation.ExpertState],
    scanner: privacy.Scanner,
    caches: tuple[cache_mod.ExactCache | None, cache_mod.SemanticCache | None],
    variant: str | None = None,
) -> PolicyRuntime:
    from kascade.gateway import ledger

    cap = policy.max_cost_per_request_usd
    return PolicyRuntime(
        name=name,
        config=policy,
        tiers=[
            LocalTier(
                name=tier.pool,
                pool=config.pools[tier.pool],
                max_prompt_tokens=tier.max_prompt_tokens,
            )
            for tier in policy.local_tiers()
        ],
        scanner=scanner,
        experts=[experts[e] for e in policy.experts],
        exact=caches[0],
        semantic=caches[1],
        max_cost_nanos=None if cap is None else ledger.usd_to_nanos(str(cap)),
        variant=variant,
    )
