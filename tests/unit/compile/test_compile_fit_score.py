"""confidence.target.fitScore (and feedbackLabels) compiles into the gateway config: a
combined policy without weights is served (it fits them), and a variant that scores by
another method is served with the policy's target (the gateway fits only arms that score
combined)."""

from __future__ import annotations

from pathlib import Path

from kascade.api import v1alpha1
from kascade.compile import gateway as compile_gateway
from kascade.compile import resources
from kascade.local import objects

COMPLETE = Path(__file__).resolve().parents[3] / "examples" / "complete"


def test_fit_score_compiles_and_a_variant_of_another_method_is_served() -> None:
    loaded = objects.load(COMPLETE)
    [policy] = [p for p in loaded.policies if p.metadata.name == "assistant"]
    data = policy.model_dump(by_alias=True, exclude_none=True)
    data["spec"]["confidence"] = {
        "method": "combined",  # no weights: the gateway fits them
        "target": {
            "maxLocalErrorRate": 0.1,
            "fitScore": True,
            "tasks": ["chat"],
            "feedbackLabels": True,
        },
    }
    data["spec"]["variants"] = [
        {"name": "fitted", "weight": 1},
        {"name": "tokens", "weight": 1,
         "overrides": {"confidence": {"method": "mean-token-prob"}}},
        {"name": "also-combined", "weight": 1, "overrides": {"confidence": {"threshold": 0.6}}},
    ]  # fmt: skip
    compiled = compile_gateway.gateway_config(
        namespace="team-a",
        pools=loaded.pools,
        experts=loaded.experts,
        policies=[v1alpha1.RoutingPolicy.model_validate(data)],
        pool_endpoint=lambda p: resources.serve_endpoint(pool=p.metadata.name, namespace="team-a"),
        credentials="file",
    )
    assert compiled.invalid == {}
    served = compiled.config.policies["assistant"]
    assert served.confidence.combined is None
    assert served.confidence.target is not None
    assert served.confidence.target.fit_score
    assert served.confidence.target.feedback_labels  # ratings label (opt-in) compiled too
    arms = {v.name: v.confidence for v in served.variants}
    assert arms["fitted"] is None  # the policy's own confidence
    tokens, combined = arms["tokens"], arms["also-combined"]
    assert tokens is not None
    assert combined is not None
    assert tokens.method == "mean-token-prob"
    assert tokens.target == combined.target == served.confidence.target
