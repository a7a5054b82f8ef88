"""The learned threshold mirrored from the gateway's status into RoutingPolicy.status."""

from __future__ import annotations

import copy
from typing import Any

from kascade.api.v1alpha1 import routingpolicy
from kascade.controller import quality

DOCUMENT = {
    "quality": {
        "chat": {
            "maxLocalErrorRate": 0.1,
            "confidenceLevel": 0.9,
            "tasks": {
                "math": {
                    "labels": 80,
                    "threshold": 0.85,
                    "localErrorEstimate": 0.0125,
                    "localErrorUpperBound": 0.0871234567,
                },
                "*": {
                    "labels": 300,
                    "threshold": 0.55,
                    "localErrorEstimate": 0.02,
                    "localErrorUpperBound": 0.061,
                },
                "code": {
                    "labels": 12,
                    "threshold": None,
                    "localErrorEstimate": None,
                    "localErrorUpperBound": None,
                },
            },
        }
    }
}


def test_status_lists_all_traffic_first_and_validates_against_the_api_model() -> None:
    status, _ = quality.policy_quality(DOCUMENT, policy="chat", previous=None)
    assert status is not None
    assert [item["task"] for item in status["learned"]] == ["*", "code", "math"]
    assert status["learned"][2]["localErrorUpperBound"] == 0.087123
    model = routingpolicy.QualityStatus.model_validate(status)
    assert model.learned[0].threshold == 0.55


def test_every_moved_threshold_is_named_once() -> None:
    _, first = quality.policy_quality(DOCUMENT, policy="chat", previous=None)
    assert len(first) == 2  # code has no threshold yet
    assert "task * moved from None to 0.55 on 300 labels" in first[0]
    status, _ = quality.policy_quality(DOCUMENT, policy="chat", previous=None)
    _, again = quality.policy_quality(DOCUMENT, policy="chat", previous={"quality": status})
    assert again == []
    moved = {"quality": {"chat": {**DOCUMENT["quality"]["chat"]}}}
    moved["quality"]["chat"]["tasks"] = {
        **DOCUMENT["quality"]["chat"]["tasks"],
        "*": {**DOCUMENT["quality"]["chat"]["tasks"]["*"], "threshold": 0.6},
    }
    _, changed = quality.policy_quality(moved, policy="chat", previous={"quality": status})
    assert len(changed) == 1
    assert "from 0.55 to 0.6" in changed[0]


def test_no_gateway_or_no_target_gives_nothing() -> None:
    assert quality.policy_quality(None, policy="chat", previous=None) == (None, [])
    assert quality.policy_quality(DOCUMENT, policy="other", previous=None) == (None, [])


def _arm(threshold: float | None, labels: int, **tasks: Any) -> dict[str, Any]:
    """One variant's figures as the gateway reports them."""
    figures = {
        "labels": labels,
        "threshold": threshold,
        "localErrorEstimate": None if threshold is None else 0.01,
        "localErrorUpperBound": None if threshold is None else 0.05,
    }
    return {
        "maxLocalErrorRate": 0.1,
        "confidenceLevel": 0.9,
        "tasks": {"*": figures, **tasks},
    }


VARIANTS = {
    "quality": {
        "chat": {
            "variants": {
                "tokens": _arm(0.85, 300),
                "combined": _arm(
                    0.3, 280, math={"labels": 60, "threshold": 0.25, "localErrorEstimate": 0.0}
                ),
            }
        }
    }
}


def test_each_variant_has_its_own_entries_all_traffic_first() -> None:
    status, _ = quality.policy_quality(VARIANTS, policy="chat", previous=None)
    assert status is not None
    assert [(item["variant"], item["task"]) for item in status["learned"]] == [
        ("combined", "*"),
        ("tokens", "*"),
        ("combined", "math"),
    ]
    assert [item["threshold"] for item in status["learned"]] == [0.3, 0.85, 0.25]
    assert status["maxLocalErrorRate"] == 0.1
    model = routingpolicy.QualityStatus.model_validate(status)
    assert model.learned[1].variant == "tokens"


def test_a_moved_variant_threshold_names_its_variant() -> None:
    status, first = quality.policy_quality(VARIANTS, policy="chat", previous=None)
    assert len(first) == 3
    assert "variant tokens, task * moved from None to 0.85 on 300 labels" in first[1]
    moved = copy.deepcopy(VARIANTS)
    moved["quality"]["chat"]["variants"]["tokens"]["tasks"]["*"]["threshold"] = 0.9
    _, changed = quality.policy_quality(moved, policy="chat", previous={"quality": status})
    # Only the arm that moved: the other arm's '*' has its own previous value.
    assert len(changed) == 1
    assert "variant tokens, task * moved from 0.85 to 0.9" in changed[0]


def test_a_policy_without_variants_has_no_variant_field() -> None:
    status, messages = quality.policy_quality(DOCUMENT, policy="chat", previous=None)
    assert status is not None
    assert all("variant" not in item for item in status["learned"])
    assert all("variant" not in message for message in messages)


def test_the_entries_stay_within_the_bound_keeping_every_arms_all_traffic() -> None:
    many = {f"t{i:02d}": {"labels": 10, "threshold": 0.5} for i in range(32)}
    arms = {f"v{i}": _arm(0.5, 100, **many) for i in range(3)}
    document = {"quality": {"chat": {"variants": arms}}}
    status, _ = quality.policy_quality(document, policy="chat", previous=None)
    assert status is not None
    assert len(status["learned"]) == 64
    assert [item["variant"] for item in status["learned"][:3]] == ["v0", "v1", "v2"]
    assert all(item["task"] == "*" for item in status["learned"][:3])
    routingpolicy.QualityStatus.model_validate(status)


def test_an_arm_that_fits_its_score_says_on_how_many_labels() -> None:
    fitted = copy.deepcopy(DOCUMENT)
    fitted["quality"]["chat"]["fittedScore"] = {
        "labels": 160,
        "fittedOn": 150,
        "intercept": -0.4,
        "weights": {"log_min_token_prob": 1.2},
        "fittedAt": "2026-12-03T19:00:00+00:00",
    }
    status, _ = quality.policy_quality(fitted, policy="chat", previous=None)
    assert status is not None
    assert {item["scoreLabels"] for item in status["learned"]} == {150}
    model = routingpolicy.QualityStatus.model_validate(status)
    assert model.learned[0].score_labels == 150
    # Not fitted yet (or not fitting): no figure, as before.
    fitted["quality"]["chat"]["fittedScore"] = {"labels": 20}
    status, _ = quality.policy_quality(fitted, policy="chat", previous=None)
    assert status is not None
    assert all("scoreLabels" not in item for item in status["learned"])


def test_an_arm_that_takes_ratings_says_how_many_labels_came_from_them() -> None:
    rated = copy.deepcopy(DOCUMENT)
    rated["quality"]["chat"]["feedbackLabels"] = 37
    status, _ = quality.policy_quality(rated, policy="chat", previous=None)
    assert status is not None
    assert {item["feedbackLabels"] for item in status["learned"]} == {37}
    model = routingpolicy.QualityStatus.model_validate(status)
    assert model.learned[0].feedback_labels == 37
    # Without feedbackLabels on the target: no figure, as before.
    status, _ = quality.policy_quality(DOCUMENT, policy="chat", previous=None)
    assert status is not None
    assert all("feedbackLabels" not in item for item in status["learned"])
