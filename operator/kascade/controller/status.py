"""Writing status: only when it changed, never touching spec."""

from __future__ import annotations

from typing import Any

from kascade.controller import kube as kube_mod


def changed(current: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether any field of ``desired`` differs from the current status.

    Nested objects compare field by field, as a merge patch applies them: a writer that
    owns ``replicas.ready`` but not ``replicas.desired`` sees no change when only the
    field it does not write differs. Lists (conditions) compare whole.
    """
    current = current or {}
    for key, value in desired.items():
        now = current.get(key)
        if isinstance(value, dict) and isinstance(now, dict):
            if changed(now, value):
                return True
        elif now != value:
            return True
    return False


async def write(kube: kube_mod.Kube, body: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Patches the status subresource if it differs; returns whether it wrote."""
    if not changed(body.get("status"), desired):
        return False
    meta = body["metadata"]
    await kube.patch_status(
        body["kind"], namespace=meta["namespace"], name=meta["name"], status=desired
    )
    return True
