"""Kubernetes Events about Kascade objects (best effort: a failure is logged, not raised)."""

from __future__ import annotations

import datetime
import logging
from typing import Any

from kascade.controller import kube as kube_mod

__all__ = ["record"]

log = logging.getLogger("kascade.operator")


async def record(
    kube: kube_mod.Kube,
    body: dict[str, Any],
    *,
    reason: str,
    message: str,
    type_: str = "Normal",
    at: datetime.datetime | None = None,
) -> None:
    """Creates one Event on the object ``body`` (``at``: its time, default now)."""
    meta = body["metadata"]
    when = at if at is not None else datetime.datetime.now(datetime.UTC)
    stamp = when.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    try:
        await kube.create(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": body.get("apiVersion"),
                    "kind": body.get("kind"),
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid"),
                },
                "reason": reason,
                "message": message[:1024],
                "type": type_,
                "source": {"component": "kascade-operator"},
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
            }
        )
    except kube_mod.KubeError as exc:
        log.warning("Could not record an Event for %s/%s: %s", body.get("kind"), meta["name"], exc)
