"""One object that cannot be compiled never takes its namespace down.

The objects here pass the models and are then bent the way a stored object can be when
the API and the gateway disagree (the class of bug issue 11 found): the compiler must
leave exactly that object out, name its field, and compile the neighbours as usual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kascade.api import v1alpha1
from kascade.api.v1alpha1 import routingpolicy
from kascade.compile import gateway as compile_gateway
from kascade.compile import resources
from kascade.local import objects, validate
from kascade.local import render as render_cli


def _pool(name: str = "pool") -> v1alpha1.LocalModelPool:
    return v1alpha1.LocalModelPool.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "model": {"runtime": "llama-cpp", "source": "builtin://smollm2-135m-instruct"}
            },
        }
    )


def _expert(name: str, **spec: Any) -> v1alpha1.CloudExpert:
    return v1alpha1.CloudExpert.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "credentials": {"secretRef": {"name": "openai", "key": "api-key"}},
                "pricing": {"inputPerMillionTokens": 0.15, "outputPerMillionTokens": 0.6},
                "budget": {"limitUSD": 10},
                **spec,
            },
        }
    )


def _policy(name: str, **spec: Any) -> v1alpha1.RoutingPolicy:
    return v1alpha1.RoutingPolicy.model_validate(
        {"metadata": {"name": name}, "spec": {"localPool": "pool", **spec}}
    )


def _compile(
    *, experts: list[v1alpha1.CloudExpert], policies: list[v1alpha1.RoutingPolicy]
) -> compile_gateway.CompiledGateway:
    return compile_gateway.gateway_config(
        namespace="ns",
        pools=[_pool()],
        experts=experts,
        policies=policies,
        pool_endpoint=lambda p: resources.serve_endpoint(pool=p.metadata.name, namespace="ns"),
        credentials="file",
    )


def test_an_uncompilable_policy_is_left_out_naming_its_field() -> None:
    broken = _policy("broken")
    # A name the gateway cannot take, as if the CRD and the gateway disagreed.
    broken.spec.privacy.custom_patterns = [
        routingpolicy.CustomPattern.model_construct(name="Two_FA", regex="[0-9]{6}")
    ]
    healthy = _policy("healthy", experts=["gpt"])
    compiled = _compile(experts=[_expert("gpt")], policies=[broken, healthy])
    assert list(compiled.config.policies) == ["healthy"]
    assert compiled.config.policies["healthy"].experts == ["gpt"]
    [line] = compiled.invalid["RoutingPolicy/broken"]
    assert line.startswith("spec.privacy.customPatterns[0].name: String should match pattern")
    assert "(got 'Two_FA')" in line
    assert set(compiled.invalid) == {"RoutingPolicy/broken"}


def test_an_uncompilable_expert_is_left_out_and_its_policies_keep_the_others() -> None:
    broken = _expert("broken")
    broken.spec.budget.limit_usd = 5e7  # beyond what the ledger counts exactly
    policy = _policy("assistant", experts=["broken", "gpt"])
    compiled = _compile(experts=[broken, _expert("gpt")], policies=[policy])
    assert compiled.config.policies["assistant"].experts == ["gpt"]
    assert list(compiled.config.experts) == ["gpt"]
    [line] = compiled.invalid["CloudExpert/broken"]
    assert line.startswith("spec.budget.limitUSD: Input should be less than or equal to 9000000")
    assert compile_gateway.expert_failures(broken) == [line]
    assert compile_gateway.expert_failures(_expert("gpt")) == []


def test_a_rule_sending_to_a_suspended_expert_names_the_rule() -> None:
    paused = _expert("paused", suspend=True)
    routed = _policy(
        "routed",
        experts=["paused"],
        rules=[{"name": "code", "when": {"taskLabels": ["code"]}, "action": "expert",
                "expert": "paused"}],
    )  # fmt: skip
    compiled = _compile(experts=[paused], policies=[routed, _policy("plain")])
    assert list(compiled.config.policies) == ["plain"]
    [line] = compiled.invalid["RoutingPolicy/routed"]
    assert line.startswith("spec.rules[0].expert: 'paused' is suspended or cannot be compiled")


_SUSPENDED_TARGET = """\
apiVersion: kascade.io/v1alpha1
kind: LocalModelPool
metadata: {name: pool}
spec:
  model: {runtime: llama-cpp, source: "builtin://smollm2-135m-instruct"}
---
apiVersion: kascade.io/v1alpha1
kind: CloudExpert
metadata: {name: paused}
spec:
  provider: openai-compatible
  endpoint: http://127.0.0.1:9000/v1
  allowInsecureHttp: true
  model: m
  pricing: {inputPerMillionTokens: 1, outputPerMillionTokens: 2}
  budget: {limitUSD: 5}
  suspend: true
---
apiVersion: kascade.io/v1alpha1
kind: RoutingPolicy
metadata: {name: routed}
spec:
  localPool: pool
  experts: [paused]
  rules:
    - {name: code, when: {taskLabels: [code]}, action: expert, expert: paused}
"""


def test_validate_and_render_report_the_same_compile_errors(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "all.yaml").write_text(_SUSPENDED_TARGET)
    assert validate.main(["-f", str(tmp_path)]) == 1
    validate_err = capsys.readouterr().err
    assert render_cli.main(["-f", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    expected = "RoutingPolicy/routed: spec.rules[0].expert: 'paused' is suspended"
    assert expected in validate_err
    assert expected in captured.err
    assert "Traceback" not in validate_err + captured.err
    findings = objects.compile_findings(objects.load(tmp_path))
    assert [line.split(":")[0] for line in findings.errors] == ["RoutingPolicy/routed"]


def test_validate_warns_about_references_outside_the_files(tmp_path: Path, capsys: Any) -> None:
    # The API server accepts a policy whose pool is not there yet; so does validate.
    (tmp_path / "policy.yaml").write_text(_SUSPENDED_TARGET.split("---\n")[2])
    assert validate.main(["-f", str(tmp_path / "policy.yaml")]) == 0
    captured = capsys.readouterr()
    assert "warning: RoutingPolicy/routed: references LocalModelPool/pool, CloudExpert/paused" in (
        captured.err
    )
    assert captured.out.startswith("valid: 0 LocalModelPool, 0 CloudExpert, 1 RoutingPolicy")


def test_an_unreadable_expert_is_not_missing_and_is_left_out() -> None:
    policy = _policy("assistant", experts=["unreadable", "gpt"])
    compiled = compile_gateway.gateway_config(
        namespace="ns",
        pools=[_pool()],
        experts=[_expert("gpt")],
        policies=[policy],
        pool_endpoint=lambda p: resources.serve_endpoint(pool=p.metadata.name, namespace="ns"),
        credentials="file",
        unparsed_experts=["unreadable"],
    )
    assert compiled.missing == {}
    assert compiled.config.policies["assistant"].experts == ["gpt"]
