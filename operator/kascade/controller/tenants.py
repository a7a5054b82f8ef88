"""Tenant status: whether its keys Secret exists (Ready) and its spend, mirrored from
the namespace gateway's ledger. Never reads or writes the keys themselves: only the
number of data keys the Secret holds."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from kascade.controller import conditions as cond
from kascade.controller import reconcile, status


def _rfc3339(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    )


def tenant_spend(
    document: dict[str, Any] | None, *, tenant: str, previous: dict[str, Any] | None
) -> dict[str, Any] | None:
    """``status.spend`` of a Tenant from a gateway status document (None: unknown).

    ``updatedAt`` only moves when a figure changed, so an idle tenant is not rewritten.
    """
    entry = ((document or {}).get("tenants") or {}).get(tenant) or {}
    budget = entry.get("budget")
    if not budget:
        return None
    spend: dict[str, Any] = {
        "spentUSD": float(budget["spentUSD"]),
        "reservedUSD": float(budget["reservedUSD"]),
    }
    old = dict((previous or {}).get("spend") or {})
    old_updated = old.pop("updatedAt", None)
    spend["updatedAt"] = old_updated if old == spend and old_updated else _rfc3339(time.time())
    return spend


async def reconcile_tenant(ctx: reconcile.Context, body: dict[str, Any]) -> None:
    """Ready while the keys Secret exists with at least one key; spend from the gateway."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    generation = meta.get("generation")
    secret_name = ((body.get("spec") or {}).get("keys") or {}).get("secretRef", {}).get("name")
    secret = await ctx.kube.get("Secret", namespace=namespace, name=str(secret_name))
    count = len((secret or {}).get("data") or {})
    if secret is None:
        ready, reason = False, cond.Reason.SECRET_NOT_FOUND
        message = f"Secret {secret_name!r} not found in namespace {namespace!r}: no key works"
    elif count == 0:
        ready, reason = False, cond.Reason.SECRET_KEY_MISSING
        message = f"Secret {secret_name!r} holds no keys: add one per caller"
    else:
        ready, reason = True, cond.Reason.SECRET_FOUND
        message = f"Secret {secret_name!r} holds {count} key(s)"
    conds = cond.set_condition(
        list((body.get("status") or {}).get("conditions") or []),
        type_=cond.ConditionType.READY,
        status=ready,
        reason=reason,
        message=message,
        generation=generation,
    )
    desired: dict[str, Any] = {"conditions": conds, "observedGeneration": generation}
    if ctx.gateway_status is not None:
        document = await ctx.gateway_status.read(namespace)
        spend = tenant_spend(document, tenant=name, previous=body.get("status"))
        if spend is not None:
            desired["spend"] = spend
    await status.write(ctx.kube, body, desired)
