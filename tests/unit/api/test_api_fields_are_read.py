"""Every spec field of the three kinds is read by the compiler or the operator, or is
marked here as validation-only (it shapes what the API server accepts and nothing else).

The compiler and the operator's pure steps run on every example object with attribute
reads on the API models recorded (``model_dump`` counts as reading every field it
dumps). A field no one reads is an API promise nothing keeps: implement it, or remove it.
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

from kascade.api import v1alpha1
from kascade.compile import gateway as compile_gateway
from kascade.compile import resources
from kascade.compile import serving as compile_serving
from kascade.controller import autoscale, autoscaling, reconcile

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = [
    REPO / "examples" / "localmodelpool.yaml",
    REPO / "examples" / "cloudexpert.yaml",
    REPO / "examples" / "routingpolicy.yaml",
    REPO / "examples" / "complete",
    REPO / "examples" / "quickstart",
]

# Objects that take the branches the examples do not: tiers, an Azure expert.
EXTRA = """
apiVersion: kascade.io/v1alpha1
kind: LocalModelPool
metadata: {name: tier-a, namespace: ns}
spec:
  model: {runtime: llama-cpp, source: "builtin://smollm2-135m-instruct"}
  resources: {cpu: "1", memory: 1Gi}
  costPerReplicaHour: 0.01
  replicas: {min: 1, max: 2}
  placement:
    affinity:
      nodeAffinity:
        requiredDuringSchedulingIgnoredDuringExecution:
          nodeSelectorTerms:
            - matchExpressions: [{key: a, operator: In, values: [b]}]
              matchFields: [{key: metadata.name, operator: In, values: ["node-1"]}]
        preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 1
            preference: {matchExpressions: [{key: a, operator: Exists}]}
      podAffinity:
        requiredDuringSchedulingIgnoredDuringExecution: &term
          - topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels: {app: x}
              matchExpressions: [{key: app, operator: In, values: [x]}]
            namespaceSelector: {matchLabels: {team: a}}
            namespaces: [other]
            matchLabelKeys: [pod-template-hash]
            mismatchLabelKeys: [tenant]
        preferredDuringSchedulingIgnoredDuringExecution: &weighted
          - weight: 10
            podAffinityTerm: {topologyKey: kubernetes.io/hostname}
      podAntiAffinity:
        requiredDuringSchedulingIgnoredDuringExecution: *term
        preferredDuringSchedulingIgnoredDuringExecution: *weighted
  autoscaling: {enabled: true, metricsSource: prometheus, prometheusUrl: "http://prom:9090"}
---
apiVersion: kascade.io/v1alpha1
kind: CloudExpert
metadata: {name: azure, namespace: ns}
spec:
  provider: azure-openai
  endpoint: https://example.openai.azure.com
  model: gpt-4o-mini
  azure: {apiVersion: "2024-10-21"}
  credentials: {secretRef: {name: azure-key, key: api-key}}
  pricing: {inputPerMillionTokens: 0.15, outputPerMillionTokens: 0.6}
  budget: {limitUSD: 5, window: calendar-day}
---
apiVersion: kascade.io/v1alpha1
kind: RoutingPolicy
metadata: {name: tiered, namespace: ns}
spec:
  tiers:
    - {name: small, pool: tier-a, maxPromptTokens: 2000}
  experts: [azure]
  rules:
    - {name: to-small, when: {taskLabels: [chat]}, action: tier, tier: small}
---
apiVersion: kascade.io/v1alpha1
kind: RoutingPolicy
metadata: {name: learned, namespace: ns}
spec:
  localPool: tier-a
  experts: [azure]
  confidence:
    method: combined
    combined: {intercept: -1.5, weights: {log_mean_token_prob: 2.0, "task:chat": 0.3}}
    target:
      maxLocalErrorRate: 0.1
      confidenceLevel: 0.95
      shadowFraction: 0.2
      maxShadowBudgetShare: 0.05
      windowLabels: 500
      minLabels: 40
      tasks: [chat]
"""

# (model, field) -> why reading it is not needed: each says what enforces the field.
VALIDATION_ONLY: dict[tuple[str, str], str] = {
    ("CloudExpertSpec", "allow_insecure_http"): "only a CEL rule on endpoint reads it",
    ("Pricing", "currency"): "the enum accepts only USD, the unit of every price",
}

# Documented fields nothing reads yet, each with who is making it work. This list may
# only shrink: a field on it that something reads fails the test (remove it here).
NOT_YET_READ: dict[tuple[str, str], str] = {}

Seen = set[tuple[str, str]]


def _models_of(annotation: Any) -> Iterator[type[pydantic.BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models_of(arg)


def spec_models() -> list[type[pydantic.BaseModel]]:
    """Every model reachable from the three spec types."""
    found: list[type[pydantic.BaseModel]] = []
    todo: list[type[pydantic.BaseModel]] = [
        v1alpha1.LocalModelPoolSpec,
        v1alpha1.CloudExpertSpec,
        v1alpha1.RoutingPolicySpec,
    ]
    while todo:
        model = todo.pop()
        if model in found:
            continue
        found.append(model)
        for info in model.model_fields.values():
            todo.extend(_models_of(info.annotation))
    return found


def _mark_all(obj: Any, seen: Seen) -> None:
    if isinstance(obj, pydantic.BaseModel):
        for name in type(obj).model_fields:
            seen.add((type(obj).__name__, name))
            _mark_all(object.__getattribute__(obj, name), seen)
    elif isinstance(obj, list | tuple):
        for item in obj:
            _mark_all(item, seen)
    elif isinstance(obj, dict):
        for item in obj.values():
            _mark_all(item, seen)


def _trace(monkeypatch: pytest.MonkeyPatch, models: list[type[pydantic.BaseModel]]) -> Seen:
    seen: Seen = set()
    for model in models:
        fields = set(model.model_fields)
        name = model.__name__

        def getattribute(self: Any, attr: str, _fields: set[str] = fields, _n: str = name) -> Any:
            if attr in _fields:
                seen.add((_n, attr))
            return object.__getattribute__(self, attr)

        original_dump = model.model_dump

        def model_dump(self: Any, *args: Any, _dump: Any = original_dump, **kwargs: Any) -> Any:
            _mark_all(self, seen)
            return _dump(self, *args, **kwargs)

        monkeypatch.setattr(model, "__getattribute__", getattribute)
        monkeypatch.setattr(model, "model_dump", model_dump)
    return seen


def _objects(tmp_path: Path) -> list[Any]:
    objects: list[Any] = []
    extra = tmp_path / "extra.yaml"
    extra.write_text(EXTRA)
    for path in [*EXAMPLES, extra]:
        objects.extend(v1alpha1.load_path(path))
    return objects


def _compile_everything(objects: list[Any]) -> None:
    pools = [o for o in objects if isinstance(o, v1alpha1.LocalModelPool)]
    experts = [o for o in objects if isinstance(o, v1alpha1.CloudExpert)]
    policies = [o for o in objects if isinstance(o, v1alpha1.RoutingPolicy)]
    owner = {"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "o", "uid": "u"}}
    for pool in pools:
        serving = compile_serving.pool_serving_config(pool)
        resources.build_rayservice(
            pool=pool,
            serving=serving,
            namespace="ns",
            settings=resources.Settings(),
            owners=[owner],
        )
        autoscale.policy_of(spec=pool.spec)
        reconcile.desired_pool_replicas(pool, None)
        _autoscaler_reads(pool)
    for mode in ("file", "env"):
        compiled = compile_gateway.gateway_config(
            namespace="ns",
            pools=pools,
            experts=experts,
            policies=policies,
            pool_endpoint=lambda p: f"http://{p.metadata.name}",
            credentials=mode,  # type: ignore[arg-type]  # both modes, literal checked below
        )
        resources.build_gateway(
            namespace="ns",
            config=compiled.config,
            experts=experts,
            settings=resources.Settings(),
            owners=[owner],
            service_monitor=True,
        )


def _autoscaler_reads(pool: v1alpha1.LocalModelPool) -> None:
    """What the autoscaling loop reads to build its metrics source each round."""

    async def build() -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            ctx = reconcile.Context(kube=None, settings=resources.Settings())  # type: ignore[arg-type]  # the source is only built, never read
            autoscaling.make_source(ctx, pool, namespace="ns", session=session)
            pool.spec.autoscaling.interval_seconds  # noqa: B018  (the loop's sleep)

    asyncio.run(build())


def test_every_spec_field_is_read_or_validation_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    models = spec_models()
    objects = _objects(tmp_path)
    seen = _trace(monkeypatch, models)
    _compile_everything(objects)
    fields = {(m.__name__, f) for m in models for f in m.model_fields}
    unread = sorted(
        f"{m}.{f}" for m, f in fields - seen if (m, f) not in VALIDATION_ONLY | NOT_YET_READ
    )
    assert not unread, f"spec fields nothing reads: {unread}"
    now_read = sorted(f"{m}.{f}" for m, f in set(NOT_YET_READ) & seen)
    assert not now_read, f"read now, remove from NOT_YET_READ: {now_read}"
    assert set(VALIDATION_ONLY) | set(NOT_YET_READ) <= fields


def test_the_walk_sees_nested_models() -> None:
    names = {m.__name__ for m in spec_models()}
    assert {"LocalModelPoolSpec", "CloudExpertSpec", "RoutingPolicySpec"} <= names
    assert len(names) > 10, names
    assert all(reason for reason in {**VALIDATION_ONLY, **NOT_YET_READ}.values())
