"""Tenant status mirrored from the gateway's status document."""

from __future__ import annotations

from kascade.controller import tenants


def _doc(spent: str, reserved: str = "0") -> dict[str, object]:
    budget = {"spentUSD": spent, "reservedUSD": reserved, "limitUSD": "5"}
    return {"tenants": {"team-a": {"keys": 2, "budget": budget}, "team-b": {"keys": 1}}}


def test_spend_is_mirrored_and_updated_at_moves_only_on_change() -> None:
    first = tenants.tenant_spend(_doc("1.25", "0.5"), tenant="team-a", previous=None)
    assert first is not None
    assert (first["spentUSD"], first["reservedUSD"]) == (1.25, 0.5)
    stamped = {**first, "updatedAt": "2026-01-01T00:00:00Z"}
    same = tenants.tenant_spend(_doc("1.25", "0.5"), tenant="team-a", previous={"spend": stamped})
    assert same == stamped
    moved = tenants.tenant_spend(_doc("2"), tenant="team-a", previous={"spend": stamped})
    assert moved is not None
    assert moved["updatedAt"] != stamped["updatedAt"]


def test_no_budget_or_no_gateway_means_no_spend() -> None:
    assert tenants.tenant_spend(_doc("1"), tenant="team-b", previous=None) is None
    assert tenants.tenant_spend(None, tenant="team-a", previous=None) is None
