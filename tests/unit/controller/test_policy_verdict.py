"""Which experts a policy can escalate to, and the Degraded condition that says so."""

from __future__ import annotations

from typing import Any

from kascade.api import v1alpha1
from kascade.compile import gateway as compile_gateway
from kascade.controller import reconcile
from kascade.gateway import config as gw


def _expert(name: str, *, suspend: bool = False, **conditions: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"suspend": suspend},
        "status": {"conditions": [{"type": t, "status": s} for t, s in conditions.items()]},
    }


def _policy(*experts: str, fallback: str = "local") -> v1alpha1.RoutingPolicy:
    return v1alpha1.RoutingPolicy.model_validate(
        {
            "metadata": {"name": "p"},
            "spec": {
                "localPool": "pool",
                "experts": list(experts),
                "fallback": {"whenExpertsUnavailable": fallback},
            },
        }
    )


COMPILED = compile_gateway.CompiledGateway(
    config=gw.GatewayConfig(), invalid={"CloudExpert/bent": ["spec.x: bad"]}
)


def test_every_reason_an_expert_cannot_take_escalations() -> None:
    experts = [
        _expert("paused", suspend=True),
        _expert("bent"),
        _expert("unread"),
        _expert("keyless", CredentialsMissing="True"),
        _expert("spent", BudgetExhausted="True"),
        _expert("fine", CredentialsMissing="False", BudgetExhausted="False"),
    ]
    unusable = reconcile._unusable_experts(experts, COMPILED, unparsed={"unread": ["x"]})
    assert unusable == {
        "paused": "suspended",
        "bent": "invalid spec",
        "unread": "invalid spec",
        "keyless": "credentials missing",
        "spent": "budget exhausted",
    }


def test_degraded_only_when_no_listed_expert_is_usable() -> None:
    unusable = {"paused": "suspended", "keyless": "credentials missing"}
    assert reconcile._policy_unusable(_policy("paused", "fine"), unusable) is None
    assert reconcile._policy_unusable(_policy(), unusable) is None
    both = reconcile._policy_unusable(_policy("paused", "keyless"), unusable)
    assert both == {"paused": "suspended", "keyless": "credentials missing"}
    type_, status, reason, message = reconcile._degraded({"spec": {}}, both)
    assert (str(type_), status, str(reason)) == ("Degraded", True, "NoUsableExpert")
    assert message == (
        "No expert can take escalations: paused (suspended), keyless (credentials missing); "
        "escalations degrade to the local answer"
    )
    body = {"spec": {"fallback": {"whenExpertsUnavailable": "error"}}}
    assert "fail with 503" in reconcile._degraded(body, both)[3]
    assert reconcile._degraded({"spec": {}}, None)[1] is False


def _with_variants(experts: list[str], *variants: dict[str, Any]) -> v1alpha1.RoutingPolicy:
    return v1alpha1.RoutingPolicy.model_validate(
        {
            "metadata": {"name": "p"},
            "spec": {"localPool": "pool", "experts": experts, "variants": list(variants)},
        }
    )


def test_a_variant_whose_experts_are_all_unusable_degrades_the_policy() -> None:
    unusable = {"paused": "suspended", "keyless": "credentials missing"}
    stuck = {"name": "b", "weight": 1, "overrides": {"experts": ["paused", "keyless"]}}
    control = {"name": "a", "weight": 1}
    # The control arm uses the policy's own list, which still has a usable expert.
    found = reconcile._policy_unusable(_with_variants(["fine"], control, stuck), unusable)
    assert found == {
        "paused in variant b": "suspended",
        "keyless in variant b": "credentials missing",
    }
    message = reconcile._degraded({"spec": {}}, found)[3]
    assert "keyless in variant b (credentials missing)" in message


def test_unused_or_local_only_expert_lists_do_not_degrade() -> None:
    unusable = {"paused": "suspended"}
    every_arm_overrides = _with_variants(
        ["paused"],  # used by no caller: every variant has its own list
        {"name": "a", "weight": 1, "overrides": {"experts": ["fine"]}},
        {"name": "b", "weight": 1, "overrides": {"experts": []}},  # local only, on purpose
    )
    assert reconcile._policy_unusable(every_arm_overrides, unusable) is None
    control_stuck = _with_variants(
        ["paused"], {"name": "a", "weight": 1}, {"name": "b", "weight": 1, "overrides": {}}
    )
    assert reconcile._policy_unusable(control_stuck, unusable) == {"paused": "suspended"}
