"""The per-pool autoscaling loop: read the pool's window, decide, apply.

The decision itself is pure (``kascade.controller.autoscale``); this module is the I/O
around it. A decision is kept in ``status.replicas.desired`` (never in ``spec``: GitOps
owns it) and the pool's reconcile pins the RayService's Serve replicas to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from kascade.api import v1alpha1
from kascade.compile import resources
from kascade.controller import autoscale, events, reconcile
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


async def write_replicas(
    kube: kube_mod.Kube,
    *,
    namespace: str,
    name: str,
    expected: int | None,
    status: dict[str, Any],
    attempts: int = 3,
) -> bool:
    """Writes autoscaler-owned status iff ``status.replicas.desired`` is still ``expected``.

    The write carries the resourceVersion it read, so a concurrent write (a reconcile's
    ``ready``, another operator replica's decision) makes it retry on the new version
    instead of overwriting; a decision made from an outdated count is dropped, and the
    next round decides again from the stored one. Returns whether it wrote.
    """
    for _ in range(attempts):
        live = await kube.get("LocalModelPool", namespace=namespace, name=name)
        if live is None:
            return False
        stored = ((live.get("status") or {}).get("replicas") or {}).get("desired")
        if stored != expected:
            return False
        try:
            await kube.patch_status(
                "LocalModelPool",
                namespace=namespace,
                name=name,
                status=status,
                resource_version=live["metadata"]["resourceVersion"],
            )
        except kube_mod.KubeError as exc:
            if exc.status != 409:
                raise
            continue
        return True
    return False


async def _read_window(
    source: autoscale.MetricsSource, meta: dict[str, Any]
) -> autoscale.Window | None:
    reading = await source.read()
    if reading.errors:
        log.warning(
            "Read pool metrics with errors namespace=%s pool=%s errors=%s",
            meta["namespace"],
            meta["name"],
            "; ".join(reading.errors),
        )
    return reading.window


async def _commit(
    ctx: reconcile.Context,
    body: dict[str, Any],
    *,
    result: autoscale.Decision,
    current: int,
    stored: int,
) -> bool:
    """Writes the decision if the stored count is still the one it was made from."""
    meta = body["metadata"]
    now = datetime.now(UTC)
    record = autoscale.last_scale_decision(result=result, from_replicas=current, at=now)
    wrote = await write_replicas(
        ctx.kube,
        namespace=meta["namespace"],
        name=meta["name"],
        expected=stored,
        status={"replicas": {"desired": result.desired}, "lastScaleDecision": record},
    )
    if not wrote:
        log.info(
            "Dropped a scale decision made from an outdated count namespace=%s pool=%s",
            meta["namespace"],
            meta["name"],
        )
        return False
    await events.record(ctx.kube, body, reason=result.code, message=result.reason, at=now)
    log.info(
        "Scaled pool namespace=%s pool=%s from=%d to=%d reason=%s",
        meta["namespace"],
        meta["name"],
        current,
        result.desired,
        result.reason,
    )
    return True


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
    stored = (status.get("replicas") or {}).get("desired")
    if not isinstance(stored, int):
        # The autoscaler is the one writer of replicas.desired: it starts at the initial count.
        await write_replicas(
            ctx.kube,
            namespace=meta["namespace"],
            name=meta["name"],
            expected=None,
            status={"replicas": {"desired": current}},
        )
        return None
    ready = (status.get("replicas") or {}).get("ready")
    result = scaler.observe(
        now=time.time(),
        window=await _read_window(source, meta),
        current_replicas=current,
        policy=autoscale.policy_of(spec=pool.spec),
        ready_replicas=ready if isinstance(ready, int) else None,
    )
    if result.desired == current:
        return None
    committed = await _commit(ctx, body, result=result, current=current, stored=stored)
    return result if committed else None


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


class Stopper:
    """Tells one autoscaling loop to end (falsy until then), as kopf's daemon flag did."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)


class Loops:
    """One autoscaling loop per pool with autoscaling on, started, fed and stopped from
    the pool's watch events.

    kopf daemons would do this, but kopf puts a finalizer on every object a daemon or
    timer could run for; a plain task per pool needs none, so deleting a pool (or its
    namespace) never waits for the operator.
    """

    def __init__(self, ctx: reconcile.Context) -> None:
        self.ctx = ctx
        self._loops: dict[tuple[str, str], tuple[asyncio.Task[None], Stopper, dict[str, Any]]] = {}

    def observe(self, body: dict[str, Any], *, deleted: bool) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        enabled = not deleted and bool(
            ((body.get("spec") or {}).get("autoscaling") or {}).get("enabled")
        )
        entry = self._loops.get(key)
        if entry is not None:
            task, stopper, live = entry
            same = live["metadata"].get("uid") == meta.get("uid")
            if enabled and same and not task.done():
                live.clear()
                live.update(body)
                return
            stopper.set()
            del self._loops[key]
        if enabled:
            live = dict(body)
            stopper = Stopper()
            task = asyncio.create_task(run(self.ctx, body=live, stopped=stopper))
            self._loops[key] = (task, stopper, live)

    def running(self) -> list[tuple[str, str]]:
        return sorted(k for k, (task, _, _) in self._loops.items() if not task.done())

    async def close(self) -> None:
        for task, stopper, _ in self._loops.values():
            stopper.set()
            task.cancel()
        await asyncio.gather(*(t for t, _, _ in self._loops.values()), return_exceptions=True)
        self._loops.clear()
