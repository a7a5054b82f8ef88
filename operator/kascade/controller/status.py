"""Writing status: only when it changed, never touching spec."""

from __future__ import annotations

from typing import Any

from kascade.controller import kube as kube_mod


def changed(current: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether any field of ``desired`` differs from the current status."""
    current = current or {}
    return any(current.get(key) != value for key, value in desired.items())


async def write(kube: kube_mod.Kube, body: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Patches the status subresource if it differs; returns whether it wrote."""
    if not changed(body.get("status"), desired):
        return False
    meta = body["metadata"]
    await kube.patch_status(
        body["kind"], namespace=meta["namespace"], name=meta["name"], status=desired
    )
    return True
