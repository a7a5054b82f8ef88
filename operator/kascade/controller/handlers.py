"""Thin kopf handlers: each turns a watch event or resync tick into one reconcile call.

Only event watchers and indexes are used — no change-detecting handlers, timers or
daemons — so kopf keeps no progress or diff-base annotations on users' objects (a GitOps
tool sees exactly the fields its manifests set, plus ``status``) and adds no finalizer:
deleting an object or its namespace never waits for the operator, installed or not. kopf
removes the ``kascade.io/finalizer`` that earlier versions added (their timers needed it)
the next time it sees such an object. The periodic resync is one loop over the indexes;
each autoscaled pool gets a plain task (``autoscaling.Loops``). Reconciles are
level-based and idempotent, so nothing is lost by not recording progress.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from typing import Any

import kopf
import prometheus_client

from kascade.compile import resources
from kascade.controller import autoscaling, failures, pool_metrics, reconcile, spend
from kascade.controller import kube as kube_mod
from kascade.controller import tenants as tenants_mod

GROUP, VERSION = "kascade.io", "v1alpha1"
RESYNC_SECONDS = float(os.environ.get("KASCADE_RESYNC_SECONDS", "60"))
RESYNC_ROUNDS = prometheus_client.Counter(
    "kascade_operator_resync_rounds_total",
    "Resync rounds run by the operator (each queued a reconcile of every object).",
)
MANAGED = {"app.kubernetes.io/managed-by": "kascade"}

log = logging.getLogger("kascade.operator")


def settings_from_env() -> resources.Settings:
    """Cluster-wide defaults from the operator Deployment's environment (set by Helm)."""
    env = os.environ
    defaults = resources.Settings()
    return resources.Settings(
        gateway_image=env.get("KASCADE_GATEWAY_IMAGE", defaults.gateway_image),
        serving_image=env.get("KASCADE_SERVING_IMAGE", defaults.serving_image),
        gateway_image_pull_policy=env.get(
            "KASCADE_GATEWAY_IMAGE_PULL_POLICY", defaults.gateway_image_pull_policy
        ),
        serving_image_pull_policy=env.get(
            "KASCADE_SERVING_IMAGE_PULL_POLICY", defaults.serving_image_pull_policy
        ),
        gateway_replicas=int(env.get("KASCADE_GATEWAY_REPLICAS", defaults.gateway_replicas)),
        gateway_cpu_request=env.get("KASCADE_GATEWAY_CPU_REQUEST", defaults.gateway_cpu_request),
        gateway_memory_request=env.get(
            "KASCADE_GATEWAY_MEMORY_REQUEST", defaults.gateway_memory_request
        ),
        gateway_memory_limit=env.get("KASCADE_GATEWAY_MEMORY_LIMIT", defaults.gateway_memory_limit),
        gateway_hpa_max=int(env.get("KASCADE_GATEWAY_HPA_MAX", defaults.gateway_hpa_max)),
        redis_url=env.get("KASCADE_GATEWAY_REDIS_URL") or None,
        ledger_storage_class=env.get("KASCADE_GATEWAY_LEDGER_STORAGE_CLASS") or None,
        redis_secret=env.get("KASCADE_GATEWAY_REDIS_SECRET") or None,
        gateway_admitted_namespaces=_names(env.get("KASCADE_GATEWAY_ADMITTED_NAMESPACES")),
        # The operator reads status and metrics on the admin port: its namespace is admitted.
        gateway_admin_namespaces=_names(env.get("KASCADE_GATEWAY_ADMIN_NAMESPACES"))
        + _names(env.get("KASCADE_OPERATOR_NAMESPACE")),
    )


def _names(raw: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in (raw or "").split(",") if n.strip())


# ----------------------------------------------------------------------------- lifecycle


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Our own Events say what happened; kopf's per-handler Events would only add noise.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # No handler needs a finalizer; kopf removes one of this name that earlier versions
    # added, whenever it sees an object carrying it.
    settings.persistence.finalizer = "kascade.io/finalizer"
    memo.ctx = reconcile.Context(
        kube=await kube_mod.Kube.connect(),
        settings=settings_from_env(),
        gateway_status=spend.GatewayStatusReader(
            url_template=os.environ.get("KASCADE_GATEWAY_URL_TEMPLATE", spend.DEFAULT_URL_TEMPLATE)
        ),
    )
    memo.namespaces = failures.Coalescer()
    memo.generations = {}
    metrics_port = os.environ.get("KASCADE_METRICS_PORT")
    if metrics_port:
        prometheus_client.start_http_server(int(metrics_port))
    memo.objects = failures.Coalescer()
    memo.autoscalers = autoscaling.Loops(memo.ctx)
    # kopf hands each object a shallow copy of the memo: only objects created here are
    # shared, so the indexes are kept in a dict, not set as an attribute in handlers.
    memo.indexes = {}
    memo.resync = asyncio.create_task(_resync_loop(memo))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.resync.cancel()
    await memo.autoscalers.close()
    await memo.ctx.kube.close()
    if memo.ctx.gateway_status is not None:
        await memo.ctx.gateway_status.close()


# ----------------------------------------------------------------------------- indexes


def _snapshot(body: kopf.Body) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


@kopf.index(GROUP, VERSION, "localmodelpools")
def pools(namespace: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {namespace: _snapshot(body)}


@kopf.index(GROUP, VERSION, "cloudexperts")
def experts(namespace: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {namespace: _snapshot(body)}


@kopf.index(GROUP, VERSION, "routingpolicies")
def policies(namespace: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {namespace: _snapshot(body)}


@kopf.index(GROUP, VERSION, "tenants")
def tenants(namespace: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {namespace: _snapshot(body)}


def _schedule_namespace(
    memo: kopf.Memo,
    namespace: str,
    pools: kopf.Index,
    experts: kopf.Index,
    policies: kopf.Index,
    tenants: kopf.Index,
) -> None:
    async def run() -> None:
        # Read the indexes when the run starts, so a coalesced rerun sees the latest state.
        await reconcile.reconcile_namespace(
            memo.ctx,
            namespace,
            pools=list(pools.get(namespace, [])),
            experts=list(experts.get(namespace, [])),
            policies=list(policies.get(namespace, [])),
            tenants=list(tenants.get(namespace, [])),
        )

    async def report(error: Exception, count: int, retry_in: float) -> None:
        await failures.report_failure(
            memo.ctx.kube,
            list(policies.get(namespace, [])),
            error,
            failures=count,
            retry_in=retry_in,
        )

    memo.namespaces.trigger(f"namespace/{namespace}", run, report)


def _schedule_pool(
    memo: kopf.Memo, namespace: str, body: dict[str, Any], policies: kopf.Index
) -> None:
    async def run() -> None:
        await reconcile.reconcile_pool(memo.ctx, body, policies=list(policies.get(namespace, [])))

    memo.objects.trigger(f"pool/{namespace}/{body['metadata']['name']}", run, _reporter(memo, body))


def _schedule_expert(memo: kopf.Memo, namespace: str, body: dict[str, Any]) -> None:
    async def run() -> None:
        await reconcile.reconcile_expert(memo.ctx, body)

    memo.objects.trigger(
        f"expert/{namespace}/{body['metadata']['name']}", run, _reporter(memo, body)
    )


def _reporter(memo: kopf.Memo, body: dict[str, Any]) -> failures.Report:
    async def report(error: Exception, count: int, retry_in: float) -> None:
        await failures.report_failure(
            memo.ctx.kube, [body], error, failures=count, retry_in=retry_in
        )

    return report


# ----------------------------------------------------------------------------- watchers


def _spec_changed(memo: kopf.Memo, event: kopf.RawEvent, body: kopf.Body) -> bool:
    """Whether an event can change the gateway: a new, deleted or re-specified object.

    Status-only updates (most of them are the operator's own writes) do not re-render
    the namespace's gateway, which keeps a busy namespace from reconciling in a loop.
    """
    meta = body.get("metadata", {})
    key = (body.get("kind"), meta.get("namespace"), meta.get("name"))
    if event["type"] == "DELETED":
        memo.generations.pop(key, None)
        return True
    generation = meta.get("generation")
    changed = bool(memo.generations.get(key) != generation)
    memo.generations[key] = generation
    return changed


@kopf.on.event(GROUP, VERSION, "localmodelpools")
async def pool_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str,
    memo: kopf.Memo,
    pools: kopf.Index,
    experts: kopf.Index,
    policies: kopf.Index,
    tenants: kopf.Index,
    **_: Any,
) -> None:
    memo.indexes["all"] = (pools, experts, policies, tenants)
    memo.autoscalers.observe(_snapshot(body), deleted=event["type"] == "DELETED")
    if event["type"] != "DELETED":
        _schedule_pool(memo, namespace, _snapshot(body), policies)
    else:
        pool_metrics.forget_pool(namespace=namespace, name=body["metadata"]["name"])
    if _spec_changed(memo, event, body):
        _schedule_namespace(memo, namespace, pools, experts, policies, tenants)


@kopf.on.event(GROUP, VERSION, "cloudexperts")
async def expert_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str,
    memo: kopf.Memo,
    pools: kopf.Index,
    experts: kopf.Index,
    policies: kopf.Index,
    tenants: kopf.Index,
    **_: Any,
) -> None:
    memo.indexes["all"] = (pools, experts, policies, tenants)
    if event["type"] != "DELETED":
        _schedule_expert(memo, namespace, _snapshot(body))
    if _spec_changed(memo, event, body):
        _schedule_namespace(memo, namespace, pools, experts, policies, tenants)


@kopf.on.event(GROUP, VERSION, "routingpolicies")
async def policy_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str,
    memo: kopf.Memo,
    pools: kopf.Index,
    experts: kopf.Index,
    policies: kopf.Index,
    tenants: kopf.Index,
    **_: Any,
) -> None:
    memo.indexes["all"] = (pools, experts, policies, tenants)
    if _spec_changed(memo, event, body):
        _schedule_namespace(memo, namespace, pools, experts, policies, tenants)


@kopf.on.event(GROUP, VERSION, "tenants")
async def tenant_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str,
    memo: kopf.Memo,
    pools: kopf.Index,
    experts: kopf.Index,
    policies: kopf.Index,
    tenants: kopf.Index,
    **_: Any,
) -> None:
    memo.indexes["all"] = (pools, experts, policies, tenants)
    if event["type"] != "DELETED":
        _schedule_tenant(memo, namespace, _snapshot(body))
    if _spec_changed(memo, event, body):
        _schedule_namespace(memo, namespace, pools, experts, policies, tenants)


def _schedule_tenant(memo: kopf.Memo, namespace: str, body: dict[str, Any]) -> None:
    async def run() -> None:
        await tenants_mod.reconcile_tenant(memo.ctx, body)

    memo.objects.trigger(
        f"tenant/{namespace}/{body['metadata']['name']}", run, _reporter(memo, body)
    )


# KubeRay reports a pool's readiness on its RayService: mirror it into the pool at once.
@kopf.on.event("ray.io", "v1", "rayservices", labels=MANAGED)
async def rayservice_event(
    body: kopf.Body, namespace: str, memo: kopf.Memo, policies: kopf.Index, **_: Any
) -> None:
    name = body.get("metadata", {}).get("labels", {}).get("kascade.io/pool")
    if not name:
        return
    pool = await memo.ctx.kube.get("LocalModelPool", namespace=namespace, name=name)
    if pool is not None:
        _schedule_pool(memo, namespace, pool, policies)


# A hand edit of a child is repaired at once: its watch event re-renders the namespace.
@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("v1", "configmaps", labels=MANAGED)
@kopf.on.event("v1", "services", labels=MANAGED)
async def child_event(
    namespace: str,
    memo: kopf.Memo,
    pools: kopf.Index,
    experts: kopf.Index,
    policies: kopf.Index,
    tenants: kopf.Index,
    **_: Any,
) -> None:
    if policies.get(namespace):
        _schedule_namespace(memo, namespace, pools, experts, policies, tenants)


# ----------------------------------------------------------------------------- resync


async def _resync_loop(memo: kopf.Memo) -> None:
    """Every resync interval, one reconcile of every namespace's gateway, expert, pool
    and tenant.

    Secrets are not watched (that would mean reading every Secret in the cluster); a
    Secret created later (an expert's credentials, a tenant's keys) is noticed within
    one interval. The indexes come from the first watch event (kopf hands them only to
    handlers); before it there is nothing to resync. A loop, not kopf timers: timers
    would put a finalizer on every object.
    """
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        if "all" not in memo.indexes:
            continue
        try:
            _resync_all(memo, *memo.indexes["all"])
        except Exception:
            log.exception("Resync round failed; retrying next interval")
        else:
            RESYNC_ROUNDS.inc()


def _resync_all(
    memo: kopf.Memo,
    pools: kopf.Index,
    experts: kopf.Index,
    policies: kopf.Index,
    tenants: kopf.Index,
) -> None:
    for namespace in list(policies):
        _schedule_namespace(memo, namespace, pools, experts, policies, tenants)
    for namespace in list(experts):
        for body in list(experts.get(namespace, [])):
            _schedule_expert(memo, namespace, _snapshot(body))
    for namespace in list(pools):
        for body in list(pools.get(namespace, [])):
            _schedule_pool(memo, namespace, _snapshot(body), policies)
    for namespace in list(tenants):
        for body in list(tenants.get(namespace, [])):
            _schedule_tenant(memo, namespace, _snapshot(body))
