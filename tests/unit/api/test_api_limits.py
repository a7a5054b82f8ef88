"""Every bound the gateway and serving configs enforce is the CRD's bound.

The walk below visits every field of ``GatewayConfig`` and ``PoolServingConfig`` (their
JSON schemas, inlined) that carries a bound (minimum, maximum, length, pattern, enum).
Each one is either mapped to the CRD field it is compiled from, and then must accept
every value the CRD accepts, or is listed as set by the compiler itself, with the reason.
A new bounded field in either config fails the walk until it is mapped.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from kascade.api import crdgen, limits, v1alpha1
from kascade.compile import gateway as compile_gateway
from kascade.compile import serving as compile_serving
from kascade.gateway import config as gw
from kascade.serving import config as serving_config
from kascade.serving import sources

BOUND_KEYS = {
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "enum",
    "minItems",
    "maxItems",
}


@dataclasses.dataclass(frozen=True)
class Source:
    """The CRD field a config field is compiled from; ``offset`` is added on the way."""

    kind: str
    path: str
    offset: int = 0


CE, RP, LMP, TN = "CloudExpert", "RoutingPolicy", "LocalModelPool", "Tenant"

GATEWAY_SOURCES: dict[str, Source] = {
    "experts.*.provider": Source(CE, "spec.provider"),
    "experts.*.endpoint": Source(CE, "spec.endpoint"),
    "experts.*.pricing.inputPerMillionTokens": Source(CE, "spec.pricing.inputPerMillionTokens"),
    "experts.*.pricing.outputPerMillionTokens": Source(CE, "spec.pricing.outputPerMillionTokens"),
    "experts.*.budget.limitUSD": Source(CE, "spec.budget.limitUSD"),
    "experts.*.budget.window": Source(CE, "spec.budget.window"),
    "experts.*.budget.onExhausted": Source(CE, "spec.budget.onExhausted"),
    "experts.*.rateLimits.requestsPerMinute": Source(CE, "spec.rateLimits.requestsPerMinute"),
    "experts.*.rateLimits.tokensPerMinute": Source(CE, "spec.rateLimits.tokensPerMinute"),
    "experts.*.rateLimits.maxConcurrency": Source(CE, "spec.rateLimits.maxConcurrency"),
    "experts.*.timeouts.connectSeconds": Source(CE, "spec.timeouts.connectSeconds"),
    "experts.*.timeouts.requestSeconds": Source(CE, "spec.timeouts.requestSeconds"),
    # Attempts are the retries plus the first call.
    "experts.*.retries.maxAttempts": Source(CE, "spec.retries.maxRetries", offset=1),
    "experts.*.retries.initialBackoffMillis": Source(CE, "spec.retries.initialBackoffMillis"),
    "experts.*.retries.maxBackoffMillis": Source(CE, "spec.retries.maxBackoffMillis"),
    "experts.*.circuitBreaker.failureThreshold": Source(CE, "spec.circuitBreaker.failureThreshold"),
    "experts.*.circuitBreaker.windowSeconds": Source(CE, "spec.circuitBreaker.windowSeconds"),
    "experts.*.capabilities[]": Source(CE, "spec.capabilities[]"),
    "experts.*.pricing.maxTokensPerImage": Source(CE, "spec.pricing.maxTokensPerImage"),
    "experts.*.retries.maxRetryAfterSeconds": Source(CE, "spec.retries.maxRetryAfterSeconds"),
    "experts.*.retries.retryOn[]": Source(CE, "spec.retries.retryOn[]"),
    "experts.*.timeouts.firstTokenSeconds": Source(CE, "spec.timeouts.firstTokenSeconds"),
    "experts.*.timeouts.idleSeconds": Source(CE, "spec.timeouts.idleSeconds"),
    "experts.*.circuitBreaker.openSeconds": Source(CE, "spec.circuitBreaker.openSeconds"),
    "experts.*.circuitBreaker.halfOpenMaxRequests": Source(
        CE, "spec.circuitBreaker.halfOpenProbes"
    ),
    "experts.*.maxContextTokens": Source(CE, "spec.maxContextTokens"),
    "policies.*.selection": Source(RP, "spec.expertSelection"),
    "policies.*.confidence.method": Source(RP, "spec.confidence.method"),
    "policies.*.confidence.threshold": Source(RP, "spec.confidence.threshold"),
    "policies.*.confidence.dynamic.minThreshold": Source(
        RP, "spec.confidence.dynamic.minThreshold"
    ),
    "policies.*.confidence.dynamic.maxThreshold": Source(
        RP, "spec.confidence.dynamic.maxThreshold"
    ),
    "policies.*.confidence.dynamic.budgetPressure": Source(
        RP, "spec.confidence.dynamic.budgetPressure"
    ),
    "policies.*.rules[].when.minPromptTokens": Source(RP, "spec.rules[].when.minPromptTokens"),
    "policies.*.rules[].when.maxPromptTokens": Source(RP, "spec.rules[].when.maxPromptTokens"),
    "policies.*.rules[].action": Source(RP, "spec.rules[].action"),
    "policies.*.tiers": Source(RP, "spec.tiers"),
    "policies.*.tiers[].maxPromptTokens": Source(RP, "spec.tiers[].maxPromptTokens"),
    "policies.*.rules[].when.responseFormats[]": Source(RP, "spec.rules[].when.responseFormats[]"),
    "policies.*.overflow": Source(RP, "spec.overflow"),
    "policies.*.privacy.detectors[]": Source(RP, "spec.privacy.detectors[]"),
    "policies.*.privacy.customPatterns[].name": Source(RP, "spec.privacy.customPatterns[].name"),
    "policies.*.privacy.action": Source(RP, "spec.privacy.action"),
    "policies.*.privacy.unscannable": Source(RP, "spec.privacy.unscannable"),
    "policies.*.cache.exact.ttlSeconds": Source(RP, "spec.cache.exact.ttlSeconds"),
    "policies.*.cache.semantic.threshold": Source(RP, "spec.cache.semantic.threshold"),
    "policies.*.cache.semantic.ttlSeconds": Source(RP, "spec.cache.semantic.ttlSeconds"),
    "policies.*.fallback.whenExpertsUnavailable": Source(
        RP, "spec.fallback.whenExpertsUnavailable"
    ),
    "policies.*.maxCostPerRequestUSD": Source(RP, "spec.maxCostPerRequestUSD"),
    "tenants.*.budget.limitUSD": Source(TN, "spec.budget.limitUSD"),
    "tenants.*.budget.window": Source(TN, "spec.budget.window"),
    "tenants.*.budget.onExhausted": Source(TN, "spec.budget.onExhausted"),
    "tenants.*.rateLimits.requestsPerMinute": Source(TN, "spec.rateLimits.requestsPerMinute"),
    "tenants.*.rateLimits.tokensPerMinute": Source(TN, "spec.rateLimits.tokensPerMinute"),
    "tenants.*.rateLimits.maxConcurrency": Source(TN, "spec.rateLimits.maxConcurrency"),
    "tenants.*.confidenceOffset": Source(TN, "spec.confidenceOffset"),
    "policies.*.confidence.degeneration.maxRepetition": Source(
        RP, "spec.confidence.degeneration.maxRepetition"
    ),
    "policies.*.confidence.degeneration.maxPromptEcho": Source(
        RP, "spec.confidence.degeneration.maxPromptEcho"
    ),
    "policies.*.confidence.combined.intercept": Source(RP, "spec.confidence.combined.intercept"),
    "policies.*.confidence.combined.weights.*": Source(RP, "spec.confidence.combined.weights.*"),
    "policies.*.confidence.target.maxLocalErrorRate": Source(
        RP, "spec.confidence.target.maxLocalErrorRate"
    ),
    "policies.*.confidence.target.confidenceLevel": Source(
        RP, "spec.confidence.target.confidenceLevel"
    ),
    "policies.*.confidence.target.shadowFraction": Source(
        RP, "spec.confidence.target.shadowFraction"
    ),
    "policies.*.confidence.target.maxShadowBudgetShare": Source(
        RP, "spec.confidence.target.maxShadowBudgetShare"
    ),
    "policies.*.confidence.target.windowLabels": Source(RP, "spec.confidence.target.windowLabels"),
    "policies.*.confidence.target.minLabels": Source(RP, "spec.confidence.target.minLabels"),
    "policies.*.confidence.target.tasks": Source(RP, "spec.confidence.target.tasks"),
}

# A variant's confidence is the policy's with the variant's overrides in place: each
# field comes from spec.variants[].overrides.confidence (same types as spec.confidence)
# or, for the quality target a variant cannot change, from spec.confidence itself.
GATEWAY_SOURCES.update(
    {
        key.replace("policies.*.confidence.", "policies.*.variants[].confidence."): Source(
            RP,
            source.path
            if ".target." in source.path
            else source.path.replace("spec.confidence.", "spec.variants[].overrides.confidence."),
        )
        for key, source in list(GATEWAY_SOURCES.items())
        if key.startswith("policies.*.confidence.")
    }
    | {
        "policies.*.variants": Source(RP, "spec.variants"),
        "policies.*.variants[].name": Source(RP, "spec.variants[].name"),
        "policies.*.variants[].weight": Source(RP, "spec.variants[].weight"),
        "policies.*.variants[].selection": Source(RP, "spec.variants[].overrides.expertSelection"),
    }
)

# Bounded gateway fields that no CRD field feeds: the compiler (or the operator) sets them.
GATEWAY_OWN = {
    "version": "the config format version, a constant",
    "limits.maxBodyBytes": "gateway default, not in the API",
    "pools.*.endpoint": "the in-cluster Service URL the compiler builds",
    "pools.*.timeoutSeconds": "set by embedded mode only, positive",
    "experts.*.defaultMaxTokens": "gateway default, not in the API",
    "policies.*.generation": "metadata.generation, which the API server keeps >= 1",
    "policies.*.overflowWaitMillis": "gateway default, not in the API",
    "policies.*.cache.exact.maxEntries": "gateway default, not in the API",
    "policies.*.cache.exact.maxBytes": "gateway default, not in the API",
    "policies.*.cache.semantic.maxBytes": "gateway default, not in the API",
    "ledger.reservationTtlSeconds": "gateway default, not in the API",
    "policies.*.cache.semantic.maxEntries": "gateway default, not in the API",
}

SERVING_SOURCES: dict[str, Source] = {
    "model.runtime": Source(LMP, "spec.model.runtime"),
    "model.source": Source(LMP, "spec.model.source"),
    "model.sha256": Source(LMP, "spec.model.sha256"),
    "model.contextLength": Source(LMP, "spec.model.contextLength"),
    "replicas.min": Source(LMP, "spec.replicas.min"),
    "replicas.max": Source(LMP, "spec.replicas.max"),
    "replicas.initial": Source(LMP, "spec.replicas.initial"),
    "resources.gpu": Source(LMP, "spec.resources.gpu"),
    "capacity.maxConcurrentPerReplica": Source(LMP, "spec.capacity.maxConcurrentPerReplica"),
    "capacity.maxQueueWaitMillis": Source(LMP, "spec.capacity.maxQueueWaitMillis"),
}

SERVING_OWN = {
    "name": "metadata.name of the pool: a CEL rule keeps it a DNS label (POOL_NAME)",
    "resources.cpu": "a positive quantity, clamped to >= 0.001 by the compiler",
    "resources.memoryBytes": "a positive quantity converted to bytes",
    "capacity.maxQueuedPerReplica": "maxConcurrentPerReplica * QUEUE_SLOTS_PER_CONCURRENT",
    "routePrefix": "set by the compiler",
    "confidenceMethod": "the policies' spec.confidence.method, with 'combined' (scored by "
    "the gateway) compiled to 'mean-token-prob' (compile.gateway.confidence_methods)",
}


def _bounded_fields(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Field path -> its bound keywords, for every bounded node of an inlined schema."""
    out: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any], path: str) -> None:
        bounds = {k: node[k] for k in BOUND_KEYS if k in node}
        if bounds:
            out[path] = bounds
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}" if path else name)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.*")

    walk(schema, "")
    return out


def _config_fields(model: type[Any]) -> dict[str, dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _bounded_fields(crdgen.structural_schema(schema))


def _crd_fields() -> dict[str, dict[str, dict[str, Any]]]:
    fields = {}
    for info in crdgen.KINDS:
        root = crdgen.crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        kind = info.model.model_fields["kind"].default
        fields[kind] = _crd_nodes(root)
    return fields


def _crd_nodes(root: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every node of a CRD schema by path (bounded or not: an unbounded source is fine)."""
    out: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any], path: str) -> None:
        out[path] = node
        for rule in node.get("x-kubernetes-validations", []):
            # crdgen turns a hinted pattern into this rule (so the message can say what
            # is accepted); it is the field's pattern all the same.
            found = re.fullmatch(r"self\.matches\(r'(.*)'\)", rule["rule"])
            if found is not None:
                out[path] = {**node, "pattern": found.group(1)}
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}" if path else name)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.*")

    walk(root, "")
    return out


def _violations(config: dict[str, Any], crd: dict[str, Any], offset: int) -> list[str]:
    """Bounds of ``config`` that some value the CRD accepts would break."""
    found = []
    low, high = config.get("minimum"), config.get("maximum")
    if low is not None:
        crd_low = crd.get("minimum")
        strict = bool(config.get("exclusiveMinimum"))
        if crd_low is None:
            found.append(f"minimum {low}: the CRD has none")
        else:
            crd_low += offset
            crd_strict = bool(crd.get("exclusiveMinimum"))
            if crd_low < low or (crd_low == low and strict and not crd_strict):
                found.append(f"minimum {low} (exclusive={strict}) above the CRD's {crd_low}")
    if high is not None:
        crd_high = crd.get("maximum")
        strict = bool(config.get("exclusiveMaximum"))
        if crd_high is None:
            found.append(f"maximum {high}: the CRD has none")
        else:
            crd_high += offset
            crd_strict = bool(crd.get("exclusiveMaximum"))
            if crd_high > high or (crd_high == high and strict and not crd_strict):
                found.append(f"maximum {high} (exclusive={strict}) below the CRD's {crd_high}")
    if "minLength" in config and crd.get("minLength", 0) < config["minLength"]:
        found.append(f"minLength {config['minLength']} above the CRD's {crd.get('minLength')}")
    if "maxLength" in config and crd.get("maxLength", 10**9) > config["maxLength"]:
        found.append(f"maxLength {config['maxLength']} below the CRD's {crd.get('maxLength')}")
    if "pattern" in config and crd.get("pattern") != config["pattern"]:
        found.append(f"pattern {config['pattern']!r} is not the CRD's {crd.get('pattern')!r}")
    if "enum" in config and not set(crd.get("enum", ["<any>"])) <= set(config["enum"]):
        found.append(f"enum {config['enum']} lacks some of the CRD's {crd.get('enum')}")
    return found


@pytest.mark.parametrize(
    ("model", "sources", "own"),
    [
        (gw.GatewayConfig, GATEWAY_SOURCES, GATEWAY_OWN),
        (serving_config.PoolServingConfig, SERVING_SOURCES, SERVING_OWN),
    ],
    ids=["gateway", "serving"],
)
def test_every_config_bound_is_the_crd_bound(
    model: type[Any], sources: dict[str, Source], own: dict[str, str]
) -> None:
    fields = _config_fields(model)
    crds = _crd_fields()
    unmapped = sorted(set(fields) - set(sources) - set(own))
    assert not unmapped, f"bounded config fields with no CRD source: {unmapped}"
    stale = sorted((set(sources) | set(own)) - set(fields))
    assert not stale, f"mapped fields that are not bounded config fields: {stale}"
    problems = []
    for path, source in sources.items():
        crd_node = crds[source.kind].get(source.path)
        assert crd_node is not None, f"{source.kind} has no field {source.path}"
        problems += [
            f"{path} <- {source.kind} {source.path}: {problem}"
            for problem in _violations(fields[path], crd_node, source.offset)
        ]
    assert not problems, "\n".join(problems)


def test_the_walk_catches_a_mismatch() -> None:
    # The check itself must fail on the three mismatches the API once had.
    assert _violations({"maximum": 9e6}, {"maximum": 1e9}, 0)
    assert _violations({"maximum": 10, "minimum": 1}, {"maximum": 10, "minimum": 0}, 1)
    assert _violations({"pattern": "^[A-Za-z]"}, {"pattern": limits.DNS1123_LABEL}, 0)
    assert not _violations({"minimum": 0}, {"minimum": 0, "exclusiveMinimum": True}, 0)


def test_derived_bounds_hold() -> None:
    capacity = serving_config.Capacity.model_fields["max_queued_per_replica"]
    fields = _config_fields(serving_config.PoolServingConfig)
    assert capacity.default <= limits.MAX_QUEUED_PER_REPLICA
    assert fields["capacity.maxQueuedPerReplica"]["maximum"] == (
        limits.MAX_CONCURRENT_PER_REPLICA * compile_serving.QUEUE_SLOTS_PER_CONCURRENT
    )
    assert limits.POOL_NAME_MAX <= limits.DNS1123_LABEL_MAX
    assert set(limits.BUILTIN_MODEL_NAMES) == set(sources.BUILTIN_MODELS)


def _expert(**spec: Any) -> v1alpha1.CloudExpert:
    body = {
        "apiVersion": "kascade.io/v1alpha1",
        "kind": "CloudExpert",
        "metadata": {"name": "expert"},
        "spec": {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "credentials": {"secretRef": {"name": "openai", "key": "api-key"}},
            "pricing": {"inputPerMillionTokens": 0.15, "outputPerMillionTokens": 0.6},
            "budget": {"limitUSD": 10},
            **spec,
        },
    }
    return v1alpha1.CloudExpert.model_validate(body)


def test_the_issue_mismatches_now_compile_at_the_crd_maxima() -> None:
    # limitUSD at the CRD maximum, maxRetries at the CRD maximum: the gateway takes them.
    expert = _expert(
        budget={"limitUSD": limits.USD_MAX},
        retries={"maxRetries": limits.MAX_RETRIES},
    )
    compiled = compile_gateway.expert_config(expert, credentials="env")
    assert compiled.budget.limit_usd == limits.USD_MAX
    assert compiled.retries.max_attempts == limits.MAX_RETRIES + 1
    # A custom pattern whose name starts with a digit is a valid DNS label.
    policy = v1alpha1.RoutingPolicy.model_validate(
        {
            "apiVersion": "kascade.io/v1alpha1",
            "kind": "RoutingPolicy",
            "metadata": {"name": "p"},
            "spec": {
                "localPool": "pool",
                "privacy": {"customPatterns": [{"name": "2fa-code", "regex": "[0-9]{6}"}]},
            },
        }
    )
    assert compile_gateway.policy_config(policy).privacy.custom_patterns[0].name == "2fa-code"
