"""Mistakes users make, each of which must be stopped at the door (issue 11).

Every case is a complete object wrong in one way: the field both the models and the API
server must name, and (where both say it in the same words) what the message must say.
Shared by tests/unit/api/test_api_door.py (the models) and
tests/integration/api/test_api_door_cluster.py (the real API server, in one batch).
Kept free of test imports; the builders come from api_invalid_cases.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import api_invalid_cases as base


@dataclasses.dataclass(frozen=True)
class DoorCase:
    """An object wrong in one way, the field its rejection names, and the words it says."""

    name: str
    body: dict[str, Any]
    field: str
    says: str | None = None
    """Said by the models and the API server alike (None: each says it its own way)."""


def _affinity(**affinity: Any) -> dict[str, Any]:
    return base.pool(placement={"affinity": affinity})


_NODE_TERM = {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}
_NODE_AFFINITY = "spec.placement.affinity.nodeAffinity"
_REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
_PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"
_RE2 = "RE2 syntax"
_TZ = "IANA time zone"
_BUILTIN = "builtin://smollm2-135m-instruct"
_AZURE = {
    "provider": "azure-openai",
    "endpoint": "https://example.openai.azure.com",
}


def _patterns(*patterns: dict[str, Any]) -> dict[str, Any]:
    return base.policy(privacy={"customPatterns": list(patterns)})


def _rule(**rule: Any) -> dict[str, Any]:
    plain = {"name": "r", "when": {"taskLabels": ["code"]}, "action": "local"}
    return base.policy(rules=[{**plain, **rule}])


CASES: tuple[DoorCase, ...] = (
    # ---------------------------------------------------------------- LocalModelPool
    DoorCase("pool-builtin-misspelt", base.pool(model={"source": "builtin://smollm"}),
             "spec.model.source", _BUILTIN),
    DoorCase("pool-builtin-unknown-version",
             base.pool(model={"source": "builtin://smollm2-360m-instruct"}), "spec.model.source",
             _BUILTIN),
    DoorCase("pool-builtin-uppercase", base.pool(model={"source": "builtin://SmolLM2"}),
             "spec.model.source", "builtin://NAME"),
    DoorCase("pool-autoscaling-default-replicas", base.pool(autoscaling={"enabled": True}),
             "spec.autoscaling.enabled", "replicas.min < replicas.max"),
    DoorCase("pool-autoscaling-min-equals-max",
             base.pool(replicas={"min": 3, "max": 3}, autoscaling={"enabled": True}),
             "spec.autoscaling.enabled", "nothing to scale"),
    DoorCase("pool-affinity-typo", _affinity(nodeAfinity={}),
             "spec.placement.affinity.nodeAfinity"),
    DoorCase("pool-affinity-operator-unknown",
             _affinity(nodeAffinity={_REQUIRED: {"nodeSelectorTerms": [
                 {"matchExpressions": [{"key": "gpu", "operator": "Equals"}]}]}}),
             f"{_NODE_AFFINITY}.{_REQUIRED}.nodeSelectorTerms[0].matchExpressions[0].operator"),
    DoorCase("pool-affinity-terms-missing", _affinity(nodeAffinity={_REQUIRED: {}}),
             f"{_NODE_AFFINITY}.{_REQUIRED}.nodeSelectorTerms"),
    DoorCase("pool-affinity-weight-zero",
             _affinity(nodeAffinity={_PREFERRED: [{"weight": 0, "preference": _NODE_TERM}]}),
             f"{_NODE_AFFINITY}.{_PREFERRED}[0].weight"),
    DoorCase("pool-affinity-weight-above-100",
             _affinity(nodeAffinity={_PREFERRED: [{"weight": 500, "preference": _NODE_TERM}]}),
             f"{_NODE_AFFINITY}.{_PREFERRED}[0].weight"),
    DoorCase("pool-anti-affinity-without-topology-key",
             _affinity(podAntiAffinity={_REQUIRED: [
                 {"labelSelector": {"matchLabels": {"app": "kascade"}}}]}),
             f"spec.placement.affinity.podAntiAffinity.{_REQUIRED}[0].topologyKey"),
    DoorCase("pool-affinity-as-list", _affinity(nodeAffinity=[_NODE_TERM]),
             "spec.placement.affinity.nodeAffinity"),
    DoorCase("pool-toleration-effect-typo",
             base.pool(placement={"tolerations": [{"key": "gpu", "effect": "NoSchedules"}]}),
             "spec.placement.tolerations[0].effect"),
    DoorCase("pool-toleration-operator-lowercase",
             base.pool(placement={"tolerations": [{"key": "gpu", "operator": "exists"}]}),
             "spec.placement.tolerations[0].operator"),
    DoorCase("pool-memory-gb", base.pool(resources={"memory": "1gb"}), "spec.resources.memory",
             "a positive quantity such as 2, 500m"),
    DoorCase("pool-memory-negative", base.pool(resources={"memory": "-1Gi"}),
             "spec.resources.memory", "a positive quantity such as 2, 500m"),
    DoorCase("pool-gpu-fraction", base.pool(resources={"gpu": 0.5}), "spec.resources.gpu"),
    DoorCase("pool-replicas-as-string", base.pool(replicas={"max": "3"}), "spec.replicas.max"),
    DoorCase("pool-context-too-large", base.pool(model={"contextLength": 2_000_000}),
             "spec.model.contextLength"),
    DoorCase("pool-concurrency-too-high", base.pool(capacity={"maxConcurrentPerReplica": 5000}),
             "spec.capacity.maxConcurrentPerReplica"),
    DoorCase("pool-autoscaling-interval-too-short", base.pool(autoscaling={"intervalSeconds": 1}),
             "spec.autoscaling.intervalSeconds"),
    DoorCase("pool-sha256-uppercase",
             base.pool(model={"source": "https://models.example.com/m.gguf", "sha256": "A" * 64}),
             "spec.model.sha256", "64 lowercase hexadecimal digits"),
    DoorCase("pool-hf-source-without-file", base.pool(model={"source": "hf://org/repo"}),
             "spec.model.source", "hf://ORG/REPO/FILE"),
    DoorCase("pool-file-source-relative", base.pool(model={"source": "file://models/m.gguf"}),
             "spec.model.source", "file:///ABSOLUTE/PATH"),
    DoorCase("pool-name-starts-with-digit",
             base.patched(base.pool(), {"metadata": {"name": "1pool"}}), "metadata.name",
             "starting with a letter"),
    # ---------------------------------------------------------------- CloudExpert
    DoorCase("expert-endpoint-user-password",
             base.expert(endpoint="https://user:pass@api.example.com/v1"), "spec.endpoint",
             "credentials.secretRef"),
    DoorCase("expert-endpoint-token-as-user",
             base.expert(endpoint="https://sk-live-abc123@api.example.com"), "spec.endpoint",
             "credentials.secretRef"),
    DoorCase("expert-endpoint-with-query",
             base.expert(endpoint="https://api.example.com/v1?api-key=abc"), "spec.endpoint",
             "without query or fragment"),
    DoorCase("expert-timezone-misspelt", base.expert(budget={"limitUSD": 10,
             "timeZone": "Europe/Berln"}), "spec.budget.timeZone", _TZ),
    DoorCase("expert-timezone-lowercase", base.expert(budget={"limitUSD": 10, "timeZone": "utc"}),
             "spec.budget.timeZone", _TZ),
    DoorCase("expert-timezone-offset", base.expert(budget={"limitUSD": 10, "timeZone": "+02:00"}),
             "spec.budget.timeZone", _TZ),
    DoorCase("expert-timezone-abbreviation", base.expert(budget={"limitUSD": 10,
             "timeZone": "CEST"}), "spec.budget.timeZone", _TZ),
    DoorCase("expert-limit-beyond-ledger", base.expert(budget={"limitUSD": 50_000_000}),
             "spec.budget.limitUSD"),
    DoorCase("expert-max-retries-11", base.expert(retries={"maxRetries": 11}),
             "spec.retries.maxRetries"),
    DoorCase("expert-azure-api-version-short",
             base.expert(**_AZURE, azure={"apiVersion": "2024-10"}), "spec.azure.apiVersion",
             "a date like 2024-10-21"),
    DoorCase("expert-azure-without-endpoint", base.expert(provider="azure-openai"),
             "spec.endpoint", "endpoint is required"),
    DoorCase("expert-retry-on-status-code", base.expert(retries={"retryOn": ["429"]}),
             "spec.retries.retryOn[0]"),
    DoorCase("expert-backoff-inverted",
             base.expert(retries={"initialBackoffMillis": 10000, "maxBackoffMillis": 5000}),
             "spec.retries.initialBackoffMillis", "initialBackoffMillis must be <="),
    DoorCase("expert-first-token-after-request",
             base.expert(timeouts={"firstTokenSeconds": 120, "requestSeconds": 60}),
             "spec.timeouts.firstTokenSeconds", "firstTokenSeconds must be <="),
    DoorCase("expert-rpm-zero", base.expert(rateLimits={"requestsPerMinute": 0}),
             "spec.rateLimits.requestsPerMinute"),
    DoorCase("expert-secret-key-with-slash",
             base.expert(credentials={"secretRef": {"name": "openai", "key": "api/key"}}),
             "spec.credentials.secretRef.key", "letters, digits, '-', '_' and '.'"),
    DoorCase("expert-model-with-space", base.expert(model="gpt 4o"), "spec.model",
             "a name without spaces"),
    DoorCase("expert-price-as-string", base.expert(pricing={"inputPerMillionTokens": "0.15",
             "outputPerMillionTokens": 0.6}), "spec.pricing.inputPerMillionTokens"),
    DoorCase("expert-on-exhausted-unknown", base.expert(budget={"limitUSD": 10,
             "onExhausted": "queue"}), "spec.budget.onExhausted"),
    DoorCase("expert-breaker-threshold-zero", base.expert(circuitBreaker={"failureThreshold": 0}),
             "spec.circuitBreaker.failureThreshold"),
    DoorCase("expert-secret-ref-missing-key",
             base.expert(credentials={"secretRef": {"name": "openai", "key": base.DELETE}}),
             "spec.credentials.secretRef.key"),
    # ---------------------------------------------------------------- RoutingPolicy
    DoorCase("policy-regex-unbalanced", _patterns({"name": "id", "regex": "(E[0-9]{6}"}),
             "spec.privacy.customPatterns[0].regex", _RE2),
    DoorCase("policy-regex-backreference", _patterns({"name": "dup", "regex": r"(\w)\1"}),
             "spec.privacy.customPatterns[0].regex", _RE2),
    DoorCase("policy-regex-lookahead", _patterns({"name": "pw", "regex": "(?=secret)"}),
             "spec.privacy.customPatterns[0].regex", _RE2),
    DoorCase("policy-regex-huge-repeat", _patterns({"name": "x", "regex": "a{2000}"}),
             "spec.privacy.customPatterns[0].regex", _RE2),
    DoorCase("policy-pattern-name-uppercase", _patterns({"name": "EmployeeId", "regex": "E1"}),
             "spec.privacy.customPatterns[0].name", "RFC 1123 label"),
    DoorCase("policy-pattern-name-underscore", _patterns({"name": "two_fa", "regex": "[0-9]"}),
             "spec.privacy.customPatterns[0].name", "RFC 1123 label"),
    DoorCase("policy-duplicate-pattern-names",
             _patterns({"name": "id", "regex": "a"}, {"name": "id", "regex": "b"}),
             "spec.privacy.customPatterns[1]"),
    DoorCase("policy-detector-unknown", base.policy(privacy={"detectors": ["ssn"]}),
             "spec.privacy.detectors[0]"),
    DoorCase("policy-pool-uppercase", base.policy(localPool="SmolPool"), "spec.localPool",
             "a LocalModelPool name"),
    DoorCase("policy-neither-pool-nor-tiers", base.policy(localPool=base.DELETE), "spec.localPool",
             "exactly one of localPool or tiers"),
    DoorCase("policy-duplicate-tier-names",
             base.policy(localPool=base.DELETE, tiers=[{"name": "small", "pool": "a"},
                                             {"name": "small", "pool": "b"}]),
             "spec.tiers[1]"),
    DoorCase("policy-tier-pool-name-too-long",
             base.policy(localPool=base.DELETE, tiers=[{"name": "small", "pool": "p" * 41}]),
             "spec.tiers[0].pool"),
    DoorCase("policy-rule-min-above-max",
             _rule(when={"minPromptTokens": 500, "maxPromptTokens": 100}),
             "spec.rules[0].when.minPromptTokens", "minPromptTokens must be <="),
    DoorCase("policy-rule-header-name-with-space",
             _rule(when={"header": {"name": "X Task"}}), "spec.rules[0].when.header.name",
             "an HTTP header name"),
    DoorCase("policy-rule-expert-on-local-action", _rule(expert="expert"),
             "spec.rules[0].expert", "accepted only when action is 'expert'"),
    DoorCase("policy-rule-action-unknown", _rule(action="cloud"), "spec.rules[0].action"),
    DoorCase("policy-cache-ttl-zero", base.policy(cache={"exact": {"ttlSeconds": 0}}),
             "spec.cache.exact.ttlSeconds"),
    DoorCase("policy-cache-ttl-over-a-week",
             base.policy(cache={"semantic": {"ttlSeconds": 1_000_000}}),
             "spec.cache.semantic.ttlSeconds"),
    DoorCase("policy-fallback-unknown", base.policy(fallback={"whenExpertsUnavailable": "queue"}),
             "spec.fallback.whenExpertsUnavailable"),
    DoorCase("policy-selection-unknown", base.policy(expertSelection="random"),
             "spec.expertSelection"),
    DoorCase("policy-confidence-method-unknown", base.policy(confidence={"method": "entropy"}),
             "spec.confidence.method"),
    DoorCase("policy-experts-as-string", base.policy(experts="expert"), "spec.experts"),
    DoorCase("policy-max-cost-beyond-ledger", base.policy(maxCostPerRequestUSD=1e7),
             "spec.maxCostPerRequestUSD"),
)  # fmt: skip
