"""The learned threshold mirrored from the gateway's status into RoutingPolicy.status."""

from __future__ import annotations

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
