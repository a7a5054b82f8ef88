"""A/B variants: sticky, weight-proportional assignment of callers, and each variant's
overrides compiled into the config that serves it."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from kascade.api import v1alpha1
from kascade.compile import gateway as compile_gateway
from kascade.gateway import config as gw
from kascade.gateway.route import variants
from kascade.gateway.tenants import access
from kascade.local import objects

COMPLETE = Path(__file__).resolve().parents[3] / "examples" / "complete"
_EXPERT = {
    "provider": "openai",
    "endpoint": "https://api.openai.com",
    "model": "m",
    "pricing": {"inputPerMillionTokens": 1.0, "outputPerMillionTokens": 2.0},
    "budget": {"limitUSD": 1.0},
}


@dataclass(frozen=True)
class _Arm:
    name: str
    weight: int


def _assign(arms: list[_Arm], who: str, *, policy: str = "assistant") -> str:
    return variants.choose(arms, point=variants.bucket(policy=policy, who=who)).name


def test_assignment_follows_the_weights_over_many_callers() -> None:
    arms = [_Arm("a", 1), _Arm("b", 2), _Arm("c", 7)]
    rng = random.Random(20261203)
    callers = [f"user\x00{rng.getrandbits(64):x}" for _ in range(20_000)]
    shares = Counter(_assign(arms, who) for who in callers)
    # Binomial standard deviation of a share at n=20,000 is at most 0.0035: 0.015 is
    # over four of them, and a biased hash (or an off-by-one interval) breaks it.
    for arm in arms:
        assert abs(shares[arm.name] / len(callers) - arm.weight / 10) < 0.015, shares


def test_a_caller_keeps_its_variant_and_policies_assign_independently() -> None:
    arms = [_Arm("a", 1), _Arm("b", 1)]
    callers = [f"user\x00caller-{i}" for i in range(2_000)]
    first = [_assign(arms, who) for who in callers]
    assert [_assign(arms, who) for who in callers] == first
    # The policy name keys the hash: in another policy about half the callers differ.
    other = [_assign(arms, who, policy="other") for who in callers]
    differ = sum(x != y for x, y in zip(first, other, strict=True)) / len(callers)
    assert 0.45 < differ < 0.55


def test_a_weight_change_moves_only_the_callers_at_the_edge() -> None:
    before = [_Arm("a", 1), _Arm("b", 1)]
    after = [_Arm("a", 6), _Arm("b", 4)]
    callers = [f"key\x00k{i}" for i in range(5_000)]
    moved = sum(_assign(before, who) != _assign(after, who) for who in callers) / len(callers)
    # Only points in [0.5, 0.6) change arm: about a tenth of the callers.
    assert 0.08 < moved < 0.12


def test_identity_prefers_the_user_field_then_the_key_then_the_tenant() -> None:
    tenant = access.TenantRuntime(
        name="team-a",
        config=gw.TenantConfig(keys=gw.TenantKeys(env="X")),
        book="tenant/team-a",
        budget=None,
        limits=None,
        policies=None,
    )
    caller = access.Caller(tenant=tenant, authenticated=True)
    key = {"authorization": "Bearer sk-secret"}
    assert variants.identity(body={"user": "u1"}, headers=key, caller=caller) == "user\x00u1"
    assert variants.identity(body={}, headers=key, caller=caller) == "key\x00sk-secret"
    assert variants.identity(body={}, headers={}, caller=caller) == "tenant\x00team-a"
    # Without keys configured a presented key is unchecked, but still tells callers apart.
    anonymous = access.ANONYMOUS_CALLER
    assert variants.identity(body={"user": ""}, headers=key, caller=anonymous) == "key\x00sk-secret"
    assert variants.identity(body={"user": 7}, headers={}, caller=anonymous) is None


def _policy_with(variants_spec: list[dict[str, object]], **spec: object) -> v1alpha1.RoutingPolicy:
    loaded = objects.load(COMPLETE)
    [policy] = [p for p in loaded.policies if p.metadata.name == "assistant"]
    data = policy.model_dump(by_alias=True, exclude_none=True)
    data["spec"].update(spec)
    data["spec"]["variants"] = variants_spec
    return v1alpha1.RoutingPolicy.model_validate(data)


def test_overrides_replace_only_the_fields_they_set() -> None:
    policy = _policy_with(
        [
            {"name": "control", "weight": 1},
            {
                "name": "strict",
                "weight": 1,
                "overrides": {
                    "confidence": {"threshold": 0.65, "method": "min-token-prob"},
                    "experts": [],
                    "expertSelection": "cheapest",
                },
            },
        ],
        confidence={"method": "sequence-prob", "threshold": 0.4,
                    "target": {"maxLocalErrorRate": 0.1}},
    )  # fmt: skip
    served = compile_gateway.policy_config(policy)
    control, strict = (served.variant_policy(v) for v in served.variants)
    assert control.confidence == served.confidence
    assert control.experts == served.experts
    assert strict.confidence.threshold == 0.65
    assert strict.confidence.method == "min-token-prob"
    # Unset fields are the policy's: the degeneration limits and the quality target.
    assert strict.confidence.degeneration == served.confidence.degeneration
    assert strict.confidence.target == served.confidence.target is not None
    assert strict.experts == []
    assert strict.selection == "cheapest"
    assert strict.local_pool == served.local_pool
    assert strict.variants == []


def test_a_variant_pool_is_served_and_a_missing_one_is_named() -> None:
    loaded = objects.load(COMPLETE)
    [pool] = loaded.pools
    big_data = pool.model_dump(by_alias=True, exclude_none=True)
    big_data["metadata"]["name"] = "big"
    big = v1alpha1.LocalModelPool.model_validate(big_data)
    policy = _policy_with([{"name": "big", "weight": 1, "overrides": {"localPool": "big"}}])

    def compiled(pools: list[v1alpha1.LocalModelPool]) -> compile_gateway.CompiledGateway:
        return compile_gateway.gateway_config(
            namespace="team-a",
            pools=pools,
            experts=loaded.experts,
            policies=[policy],
            pool_endpoint=lambda p: f"http://{p.metadata.name}",
            credentials="file",
        )

    served = compiled([pool, big])
    assert served.invalid == {}
    assert set(served.config.pools) == {pool.metadata.name, "big"}
    [variant] = served.config.policies["assistant"].variants
    assert variant.local_pool == "big"
    assert compiled([pool]).missing == {"assistant": ["LocalModelPool/big"]}
    # The variant's pool is told the method to report, like the policy's own pool.
    methods = compile_gateway.confidence_methods([policy])
    assert methods["big"] == methods[pool.metadata.name]


@pytest.mark.parametrize(
    ("variant", "field"),
    [
        ({"name": "a", "weight": 1, "localPool": "nope"}, "policies.p.variants[0].localPool"),
        ({"name": "a", "weight": 1, "experts": ["nope"]}, "policies.p.variants[0].experts"),
    ],
)
def test_gateway_config_names_a_variant_reference_it_lacks(
    variant: dict[str, object], field: str
) -> None:
    with pytest.raises(gw.ConfigError) as raised:
        gw.parse_config(
            {
                "pools": {"small": {"endpoint": "http://x", "model": "m"}},
                "policies": {"p": {"localPool": "small", "variants": [variant]}},
            }
        )
    assert field in str(raised.value)
    assert "known" in str(raised.value)


def test_gateway_config_refuses_repeated_variant_names() -> None:
    with pytest.raises(gw.ConfigError, match="variants: names must be unique, repeated: a"):
        gw.parse_config(
            {
                "pools": {"small": {"endpoint": "http://x", "model": "m"}},
                "policies": {
                    "p": {
                        "localPool": "small",
                        "variants": [{"name": "a", "weight": 1}, {"name": "a", "weight": 2}],
                    }
                },
            }
        )


def test_an_unusable_expert_leaves_the_variants_too() -> None:
    # Embedded mode drops an expert whose credential is missing; a variant listing it
    # must lose it as the policy does, or the gateway would name an unknown expert.
    policy = gw.PolicyConfig(
        local_pool="small",
        experts=["a", "b"],
        variants=[
            gw.VariantConfig(name="x", weight=1, experts=["b"]),
            gw.VariantConfig(name="y", weight=1),
        ],
    )
    usable = {"a": gw.parse_config({"experts": {"a": _EXPERT}}).experts["a"]}
    kept = compile_gateway.without_unusable_experts(policy, usable=usable)
    assert kept.experts == ["a"]
    assert [v.experts for v in kept.variants] == [[], None]
