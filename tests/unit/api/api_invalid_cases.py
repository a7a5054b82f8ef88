"""Invalid objects shared by the model tests and the API server tests.

Each case is a complete object that is wrong in exactly one way, and the field path
(or field name) both the Python models and the API server must name when rejecting it.
The integration tests load this module by path, so keep it free of test imports.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

DELETE = object()
"""Marks a key to remove in :func:`patched`."""


@dataclasses.dataclass(frozen=True)
class InvalidCase:
    """An object wrong in one way and the field its rejection must name."""

    name: str
    body: dict[str, Any]
    field: str


def pool(**spec: Any) -> dict[str, Any]:
    """A valid LocalModelPool with ``spec`` merged in."""
    return patched(
        {
            "apiVersion": "kascade.io/v1alpha1",
            "kind": "LocalModelPool",
            "metadata": {"name": "pool"},
            "spec": {
                "model": {"runtime": "llama-cpp", "source": "builtin://smollm2-135m-instruct"}
            },
        },
        {"spec": spec},
    )


def expert(**spec: Any) -> dict[str, Any]:
    """A valid CloudExpert with ``spec`` merged in."""
    return patched(
        {
            "apiVersion": "kascade.io/v1alpha1",
            "kind": "CloudExpert",
            "metadata": {"name": "expert"},
            "spec": {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "credentials": {"secretRef": {"name": "openai", "key": "api-key"}},
                "pricing": {"inputPerMillionTokens": 0.15, "outputPerMillionTokens": 0.6},
                "budget": {"limitUSD": 10},
            },
        },
        {"spec": spec},
    )


def policy(**spec: Any) -> dict[str, Any]:
    """A valid RoutingPolicy with ``spec`` merged in."""
    return patched(
        {
            "apiVersion": "kascade.io/v1alpha1",
            "kind": "RoutingPolicy",
            "metadata": {"name": "policy"},
            "spec": {"localPool": "pool", "experts": ["expert"]},
        },
        {"spec": spec},
    )


def patched(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``patch`` merged in (``DELETE`` removes a key)."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = patched(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


CASES: tuple[InvalidCase, ...] = (
    # LocalModelPool
    InvalidCase("pool-runtime-unknown", pool(model={"runtime": "tgi"}), "spec.model.runtime"),
    InvalidCase("pool-source-missing", pool(model={"source": DELETE}), "spec.model.source"),
    InvalidCase(
        "pool-source-ftp", pool(model={"source": "ftp://host/model.gguf"}), "spec.model.source"
    ),
    InvalidCase(
        "pool-source-http",
        pool(model={"source": "http://host/model.gguf"}),
        "spec.model.source",
    ),
    InvalidCase("pool-sha256-not-hex", pool(model={"sha256": "abc"}), "spec.model.sha256"),
    InvalidCase("pool-sha256-on-builtin", pool(model={"sha256": "a" * 64}), "spec.model.sha256"),
    InvalidCase(
        "pool-context-too-small", pool(model={"contextLength": 64}), "spec.model.contextLength"
    ),
    InvalidCase(
        "pool-initial-above-max",
        pool(replicas={"min": 1, "max": 2, "initial": 3}),
        "spec.replicas.initial",
    ),
    InvalidCase("pool-min-above-max", pool(replicas={"min": 3, "max": 2}), "spec.replicas.max"),
    InvalidCase("pool-min-negative", pool(replicas={"min": -1}), "spec.replicas.min"),
    InvalidCase("pool-cpu-not-quantity", pool(resources={"cpu": "two"}), "spec.resources.cpu"),
    InvalidCase("pool-memory-zero", pool(resources={"memory": "0Gi"}), "spec.resources.memory"),
    InvalidCase("pool-vllm-without-gpu", pool(model={"runtime": "vllm"}), "spec.resources.gpu"),
    InvalidCase("pool-unknown-field", pool(model={"temperature": 0.2}), "spec.model.temperature"),
    InvalidCase(
        "pool-toleration-exists-with-value",
        pool(placement={"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}),
        "spec.placement.tolerations[0].value",
    ),
    InvalidCase(
        "pool-target-utilization-zero",
        pool(autoscaling={"targetUtilization": 0}),
        "spec.autoscaling.targetUtilization",
    ),
    InvalidCase(
        "pool-prometheus-without-url",
        pool(autoscaling={"metricsSource": "prometheus"}),
        "spec.autoscaling.prometheusUrl",
    ),
    InvalidCase("pool-negative-cost", pool(costPerReplicaHour=-1), "spec.costPerReplicaHour"),
    InvalidCase(
        "pool-name-too-long",
        patched(pool(), {"metadata": {"name": "p" * 41}}),
        "metadata.name",
    ),
    # CloudExpert
    InvalidCase("expert-provider-unknown", expert(provider="cohere"), "spec.provider"),
    InvalidCase(
        "expert-http-without-opt-in",
        expert(endpoint="http://api.example.com/v1"),
        "spec.endpoint",
    ),
    InvalidCase(
        "expert-http-external-with-opt-in",
        expert(endpoint="http://api.example.com/v1", allowInsecureHttp=True),
        "spec.endpoint",
    ),
    InvalidCase(
        "expert-compatible-without-endpoint",
        expert(provider="openai-compatible"),
        "spec.endpoint",
    ),
    InvalidCase(
        "expert-openai-without-credentials", expert(credentials=DELETE), "spec.credentials"
    ),
    InvalidCase(
        "expert-secret-name-invalid",
        expert(credentials={"secretRef": {"name": "My_Secret"}}),
        "spec.credentials.secretRef.name",
    ),
    InvalidCase(
        "expert-input-price-zero",
        expert(pricing={"inputPerMillionTokens": 0}),
        "spec.pricing.inputPerMillionTokens",
    ),
    InvalidCase("expert-budget-negative", expert(budget={"limitUSD": -5}), "spec.budget.limitUSD"),
    InvalidCase(
        "expert-budget-window-unknown", expert(budget={"window": "weekly"}), "spec.budget.window"
    ),
    InvalidCase(
        "expert-currency-eur", expert(pricing={"currency": "EUR"}), "spec.pricing.currency"
    ),
    InvalidCase(
        "expert-connect-timeout-above-request",
        expert(timeouts={"connectSeconds": 30, "requestSeconds": 10}),
        "spec.timeouts.connectSeconds",
    ),
    InvalidCase("expert-azure-on-openai", expert(azure={"apiVersion": "2024-10-21"}), "spec.azure"),
    InvalidCase(
        "expert-capability-unknown",
        expert(capabilities=["chat", "telepathy"]),
        "spec.capabilities[1]",
    ),
    # RoutingPolicy
    InvalidCase(
        "policy-duplicate-experts", policy(experts=["expert", "expert"]), "spec.experts[1]"
    ),
    InvalidCase("policy-expert-name-invalid", policy(experts=["Bad Name"]), "spec.experts[0]"),
    InvalidCase(
        "policy-threshold-above-one",
        policy(confidence={"threshold": 1.2}),
        "spec.confidence.threshold",
    ),
    InvalidCase(
        "policy-threshold-outside-dynamic",
        policy(
            confidence={"threshold": 0.9, "dynamic": {"minThreshold": 0.2, "maxThreshold": 0.6}}
        ),
        "spec.confidence.threshold",
    ),
    InvalidCase(
        "policy-dynamic-min-above-max",
        policy(
            confidence={"threshold": 0.5, "dynamic": {"minThreshold": 0.7, "maxThreshold": 0.4}}
        ),
        "spec.confidence.dynamic.minThreshold",
    ),
    InvalidCase(
        "policy-combined-without-weights",
        policy(confidence={"method": "combined"}),
        "spec.confidence.combined",
    ),
    InvalidCase(
        "policy-fit-score-without-combined",
        policy(confidence={"target": {"maxLocalErrorRate": 0.1, "fitScore": True}}),
        "spec.confidence.target.fitScore",
    ),
    InvalidCase(
        "policy-combined-without-weights-or-fit-score",
        policy(
            confidence={
                "method": "combined",
                "target": {"maxLocalErrorRate": 0.1, "fitScore": False},
            }
        ),
        "spec.confidence.combined",
    ),
    InvalidCase(
        "policy-combined-unknown-feature",
        policy(
            confidence={
                "method": "combined",
                "combined": {"intercept": 0.0, "weights": {"mean_token_prob": 1.0}},
            }
        ),
        "spec.confidence.combined.weights",
    ),
    InvalidCase(
        "policy-degeneration-repetition-above-one",
        policy(confidence={"degeneration": {"maxRepetition": 1.5}}),
        "spec.confidence.degeneration.maxRepetition",
    ),
    InvalidCase(
        "policy-pool-and-tiers",
        policy(tiers=[{"name": "small", "pool": "pool"}]),
        "localPool",
    ),
    InvalidCase(
        "policy-rule-unknown-tier",
        policy(
            rules=[
                {"name": "r", "when": {"minPromptTokens": 10}, "action": "tier", "tier": "large"}
            ]
        ),
        "spec.rules",
    ),
    InvalidCase(
        "policy-rule-expert-not-listed",
        policy(
            rules=[
                {
                    "name": "r",
                    "when": {"minPromptTokens": 10},
                    "action": "expert",
                    "expert": "other",
                }
            ]
        ),
        "spec.rules",
    ),
    InvalidCase(
        "policy-variant-weight-zero",
        policy(variants=[{"name": "a", "weight": 0}]),
        "spec.variants[0].weight",
    ),
    InvalidCase(
        "policy-variant-names-repeat",
        policy(variants=[{"name": "a", "weight": 1}, {"name": "a", "weight": 2}]),
        "spec.variants",
    ),
    InvalidCase(
        "policy-variant-threshold-above-one",
        policy(
            variants=[{"name": "a", "weight": 1, "overrides": {"confidence": {"threshold": 2}}}]
        ),
        "spec.variants[0].overrides.confidence.threshold",
    ),
    InvalidCase(
        "policy-variant-pool-with-tiers",
        policy(
            localPool=DELETE,
            tiers=[{"name": "small", "pool": "pool"}],
            variants=[{"name": "a", "weight": 1, "overrides": {"localPool": "other"}}],
        ),
        "spec.variants",
    ),
    InvalidCase(
        "policy-variant-combined-without-weights",
        policy(
            variants=[
                {"name": "a", "weight": 1, "overrides": {"confidence": {"method": "combined"}}}
            ]
        ),
        "spec.variants",
    ),
    InvalidCase(
        "policy-variant-threshold-outside-dynamic",
        policy(
            confidence={"threshold": 0.5, "dynamic": {"minThreshold": 0.2, "maxThreshold": 0.6}},
            variants=[{"name": "a", "weight": 1, "overrides": {"confidence": {"threshold": 0.9}}}],
        ),
        "spec.variants",
    ),
    InvalidCase(
        "policy-variant-expert-name-invalid",
        policy(variants=[{"name": "a", "weight": 1, "overrides": {"experts": ["Bad Name"]}}]),
        "spec.variants[0].overrides.experts[0]",
    ),
    InvalidCase(
        "policy-rule-empty-when",
        policy(rules=[{"name": "r", "when": {}, "action": "local"}]),
        "spec.rules[0].when",
    ),
    InvalidCase(
        "policy-rule-tier-without-name",
        policy(rules=[{"name": "r", "when": {"minPromptTokens": 10}, "action": "tier"}]),
        "spec.rules[0].tier",
    ),
    InvalidCase(
        "policy-duplicate-rule-names",
        policy(
            rules=[
                {"name": "r", "when": {"minPromptTokens": 10}, "action": "local"},
                {"name": "r", "when": {"taskLabels": ["code"]}, "action": "local"},
            ]
        ),
        "spec.rules[1]",
    ),
    InvalidCase("policy-overflow-unknown", policy(overflow="queue"), "spec.overflow"),
    InvalidCase(
        "policy-privacy-action-unknown", policy(privacy={"action": "drop"}), "spec.privacy.action"
    ),
    InvalidCase(
        "policy-semantic-threshold-low",
        policy(cache={"semantic": {"threshold": 0.2}}),
        "spec.cache.semantic.threshold",
    ),
    InvalidCase(
        "policy-max-cost-zero", policy(maxCostPerRequestUSD=0), "spec.maxCostPerRequestUSD"
    ),
)
