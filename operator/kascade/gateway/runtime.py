"""A loaded config compiled for serving: regexes, caches, expert states, API keys.

Everything that can be done once per config is done here, not per request. A request
holds the Runtime it started with, so a reload never changes a request mid-flight.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from kascade.gateway import config as config_mod
from kascade.gateway.cache import memory as cache_mod
from kascade.gateway.experts import escalation
from kascade.gateway.privacy import redaction as privacy


@dataclass
class PolicyRuntime:
    """One policy, compiled."""

    name: str
    config: config_mod.PolicyConfig
    pool: config_mod.PoolConfig
    scanner: privacy.Scanner
    experts: list[escalation.ExpertState]
    exact: cache_mod.ExactCache | None
    semantic: cache_mod.SemanticCache | None
    max_cost_nanos: int | None


@dataclass
class Runtime:
    """A whole gateway config, compiled."""

    config: config_mod.GatewayConfig
    policies: dict[str, PolicyRuntime]
    api_keys: frozenset[str] | None
    models_body: bytes


def _api_keys(auth: config_mod.AuthConfig | None) -> frozenset[str] | None:
    if auth is None:
        return None
    if auth.api_keys_env is not None:
        raw = os.environ.get(auth.api_keys_env, "")
        keys = [k.strip() for k in raw.split(",")]
    else:
        assert auth.api_keys_file is not None
        try:
            text = Path(auth.api_keys_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise config_mod.ConfigError(
                f"auth.apiKeysFile: cannot read {auth.api_keys_file}: {exc.strerror}"
            ) from None
        keys = [line.strip() for line in text.splitlines() if not line.startswith("#")]
    found = frozenset(k for k in keys if k)
    if not found:
        raise config_mod.ConfigError(
            "auth: no API keys found (one key per line in apiKeysFile, comma separated in "
            "apiKeysEnv); remove `auth` to disable authentication"
        )
    return found


def build(
    *,
    config: config_mod.GatewayConfig,
    previous: Runtime | None,
    experts: dict[str, escalation.ExpertState],
) -> Runtime:
    """Compiles a config. `experts` (breakers) persists across reloads and is updated
    in place; caches survive when a policy's generation and cache settings are unchanged."""
    from kascade.gateway import ledger

    for name, expert_config in config.experts.items():
        state = experts.get(name)
        if state is None:
            experts[name] = escalation.ExpertState.build(name=name, config=expert_config)
        elif state.config != expert_config:
            state.reconfigure(config=expert_config)
    policies: dict[str, PolicyRuntime] = {}
    for name, policy in config.policies.items():
        old = previous.policies.get(name) if previous is not None else None
        keep = (
            old is not None
            and old.config.cache == policy.cache
            and old.config.generation == policy.generation
        )
        exact = semantic = None
        if keep and old is not None:
            exact, semantic = old.exact, old.semantic
        else:
            if policy.cache.exact is not None:
                exact = cache_mod.ExactCache(
                    ttl_seconds=policy.cache.exact.ttl_seconds,
                    max_entries=policy.cache.exact.max_entries,
                )
            if policy.cache.semantic is not None:
                semantic = cache_mod.SemanticCache(config=policy.cache.semantic)
        try:
            scanner = privacy.Scanner(privacy=policy.privacy)
        except config_mod.ConfigError as exc:
            raise config_mod.ConfigError(f"policies.{name}.{exc}") from None
        cap = policy.max_cost_per_request_usd
        policies[name] = PolicyRuntime(
            name=name,
            config=policy,
            pool=config.pools[policy.local_pool],
            scanner=scanner,
            experts=[experts[e] for e in policy.experts],
            exact=exact,
            semantic=semantic,
            max_cost_nanos=None if cap is None else ledger.usd_to_nanos(str(cap)),
        )
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
        api_keys=_api_keys(config.auth),
        models_body=json.dumps(models).encode(),
    )
