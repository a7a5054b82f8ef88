"""Spend mirrored from the gateway's status document into CloudExpert.status."""

from __future__ import annotations

from kascade.controller import spend

DOCUMENT = {
    "experts": {
        "gpt": {
            "budget": {
                "window": "calendar-day",
                "windowStart": 1795737600.0,
                "limitUSD": "10",
                "spentUSD": "0.25",
                "reservedUSD": "0.01",
                "remainingUSD": "9.74",
            },
            "circuit": {"state": "half-open", "consecutiveFailures": 3},
        }
    }
}


def test_spend_and_circuit_are_copied_with_rfc3339_times() -> None:
    status = spend.expert_status(DOCUMENT, expert="gpt", previous=None)
    assert status["spend"]["spentUSD"] == 0.25
    assert status["spend"]["reservedUSD"] == 0.01
    assert status["spend"]["remainingUSD"] == 9.74
    assert status["spend"]["windowStart"] == "2026-11-27T00:00:00Z"
    assert status["spend"]["updatedAt"].endswith("Z")
    assert status["circuit"] == {"state": "half-open", "recentFailures": 3}


def test_unchanged_figures_keep_updated_at_so_idle_status_is_not_rewritten() -> None:
    previous = {
        "spend": {
            **spend.expert_status(DOCUMENT, expert="gpt", previous=None)["spend"],
            "updatedAt": "2026-11-27T01:02:03Z",
        }
    }
    again = spend.expert_status(DOCUMENT, expert="gpt", previous=previous)
    assert again["spend"]["updatedAt"] == "2026-11-27T01:02:03Z"
    moved = {"experts": {"gpt": {**DOCUMENT["experts"]["gpt"]}}}
    moved["experts"]["gpt"]["budget"] = {**DOCUMENT["experts"]["gpt"]["budget"], "spentUSD": "0.3"}
    changed = spend.expert_status(moved, expert="gpt", previous=previous)
    assert changed["spend"]["updatedAt"] != "2026-11-27T01:02:03Z"


def test_unknown_expert_or_unreachable_gateway_gives_nothing() -> None:
    assert spend.expert_status(None, expert="gpt", previous=None) == {}
    assert spend.expert_status(DOCUMENT, expert="other", previous=None) == {}
