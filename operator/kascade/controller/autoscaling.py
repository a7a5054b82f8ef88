"""The per-pool autoscaling loop: read the pool's window, decide, apply.

The decision itself is pure (``kascade.controller.autoscale``); this module is the I/O
around it. A decision is kept in ``status.replicas.desired`` (never in ``spec``: GitOps
owns it) and the pool's reconcile pins the RayService's Serve replicas to it.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from kascade.api import v1alpha1
from kascade.compile import resources
from kascade.controller import autoscale, reconcile
from kascade.controller import kube as kube_mod

log = logging.getLogger("kascade.operator.autoscaler")


def _endpoint_lister(ctx: reconcile.Context, namespace: str) -> Any:
    async def endpoints() -> list[str]:
        slices = await ctx.kube.list(
            "EndpointSlice",
            namespace=namespace,
            label_selector=f"kubernetes.io/service-name={resources.GATEWAY_ADMIN_NAME}",
        )
        return autoscale.scrape_addresses(endpoint_slices=slices, port_name="admin")

    return endpoints


def make_source(
    ctx: reconcile.Context,
    pool: v1alpha1.LocalModelPool,
    *,
    namespace: str,
    session: aiohttp.ClientSession,
) -> autoscale.MetricsSource:
    spec = pool.spec.autoscaling
    if spec.metrics_source == "prometheus" and spec.prometheus_url:
        return autoscale.PrometheusSource(
            pool=pool.metadata.name,
            base_url=spec.prometheus_url,
            session=session,
            # Two intervals: each decision sees the latest interval and the one before.
            window_seconds=max(spec.interval_seconds * 2, 15),
        )
    return autoscale.GatewayScrapeSource(
        pool=pool.metadata.name, endpoints=_endpoint_lister(ctx, namespace), session=session
    )


def _last_change(status: dict[str, Any] | None) -> float | None:
    when = ((status or {}).get("lastScaleDecision") or {}).get("time")
    if not when:
        return None
    return datetime.fromisoformat(str(when).replace("Z", "+00:00")).timestamp()


async def step(
    ctx: reconcile.Context,
    *,
    body: dict[str, Any],
    scaler: autoscale.PoolAutoscaler,
    source: autoscale.MetricsSource,
) -> autoscale.Decision | None:
    """One autoscaling round for one pool; returns the decision when replicas changed."""
    meta = body["metadata"]
    pool = reconcile.parse_pool(body)
    status = body.get("status") or {}
    current = reconcile.desired_pool_replicas(pool, status)
    ready = (status.get("replicas") or {}).get("ready")
    reading = await source.read()
    if reading.errors:
        log.warning(
            "Read pool metrics with errors namespace=%s pool=%s errors=%s",
            meta["namespace"],
            meta["name"],
            "; ".join(reading.errors),
        )
    result = scaler.observe(
        now=time.time(),
        window=reading.window,
        current_replicas=current,
        policy=autoscale.policy_of(spec=pool.spec),
        ready_replicas=ready if isinstance(ready, int) else None,
    )
    if result.desired == current:
        return None
    now = datetime.now(UTC)
    record = autoscale.last_scale_decision(result=result, from_replicas=current, at=now)
    await ctx.kube.patch_status(
        "LocalModelPool",
        namespace=meta["namespace"],
        name=meta["name"],
        status={
            "replicas": {"desired": result.desired, "ready": ready or 0},
            "lastScaleDecision": record,
        },
    )
    await _event(ctx.kube, body, reason=result.code, message=result.reason, at=now)
    log.info(
        "Scaled pool namespace=%s pool=%s from=%d to=%d reason=%s",
        meta["namespace"],
        meta["name"],
        current,
        result.desired,
        result.reason,
    )
    return result


async def _event(
    kube: kube_mod.Kube, body: dict[str, Any], *, reason: str, message: str, at: datetime
) -> None:
    meta = body["metadata"]
    stamp = at.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    try:
        await kube.create(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": body["apiVersion"],
                    "kind": body["kind"],
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid"),
                },
                "reason": reason,
                "message": message[:1024],
                "type": "Normal",
                "source": {"component": "kascade-operator"},
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
            }
        )
    except kube_mod.KubeError as exc:
        log.warning("Could not record an Event for pool=%s: %s", meta["name"], exc)


async def run(ctx: reconcile.Context, *, body: Any, stopped: Any) -> None:
    """The daemon loop of one pool, until kopf stops it (pool deleted or autoscaling off).

    ``body`` is kopf's live view of the pool, so spec changes (interval, bounds) apply
    from the next round. A decision is written to the pool's status; the resulting watch
    event re-renders the RayService with the new replica count.
    """
    snapshot = dict(body)
    scaler = autoscale.PoolAutoscaler(last_change_at=_last_change(snapshot.get("status")))
    async with aiohttp.ClientSession() as session:
        source: autoscale.MetricsSource | None = None
        source_key: tuple[str, str | None] | None = None
        while not stopped:
            snapshot = dict(body)
            pool = reconcile.parse_pool(snapshot)
            spec = pool.spec.autoscaling
            key = (spec.metrics_source, spec.prometheus_url)
            if source is None or key != source_key:
                source, source_key = (
                    make_source(
                        ctx, pool, namespace=snapshot["metadata"]["namespace"], session=session
                    ),
                    key,
                )
            try:
                await step(ctx, body=snapshot, scaler=scaler, source=source)
            except Exception:
                log.exception("Autoscaling round failed pool=%s", snapshot["metadata"]["name"])
            await stopped.wait(spec.interval_seconds)
