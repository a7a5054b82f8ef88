"""Applying children: server-side apply only when the live object drifted from desired."""

from __future__ import annotations

from typing import Any

from kascade.compile import resources
from kascade.controller import kube as kube_mod


def is_subset(desired: Any, live: Any) -> bool:
    """Whether every field the operator sets has the same value on the live object.

    The live object is a superset (server defaults, other managers' fields), so only the
    fields present in ``desired`` are compared.
    """
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            key in live and is_subset(value, live[key]) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, v) for d, v in zip(desired, live, strict=True))
        )
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return float(desired) == float(live)
    return bool(desired == live) or str(desired) == str(live)


def in_sync(desired: kube_mod.Manifest, live: kube_mod.Manifest | None) -> bool:
    if live is None:
        return False
    live_hash = live.get("metadata", {}).get("annotations", {}).get(resources.SPEC_HASH)
    if live_hash != desired["metadata"]["annotations"][resources.SPEC_HASH]:
        return False
    body = {k: v for k, v in desired.items() if k not in {"apiVersion", "kind", "status"}}
    return is_subset(body, live)


async def ensure(kube: kube_mod.Kube, desired: kube_mod.Manifest) -> tuple[kube_mod.Manifest, bool]:
    """Applies ``desired`` unless the live object already matches; returns (live, changed)."""
    meta = desired["metadata"]
    live = await kube.get(desired["kind"], namespace=meta.get("namespace"), name=meta["name"])
    if live is not None and in_sync(desired, live):
        return live, False
    return await kube.apply(desired), True
