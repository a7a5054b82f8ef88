"""One idempotent reconcile per kind, as a recipe of small steps.

Each function reads what it needs, builds the desired children with the pure builders
of ``kascade.compile``, applies only what drifted and writes status only when it changed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic

from kascade.api import v1alpha1
from kascade.api.v1alpha1 import problems as problems_mod
from kascade.compile import gateway as compile_gateway
from kascade.compile import resources
from kascade.compile import serving as compile_serving
from kascade.controller import children, events, failures, pool_metrics, quality, spend, status
from kascade.controller import conditions as cond
from kascade.controller import kube as kube_mod

log = logging.getLogger("kascade.operator")

RAYSERVICE_CRD = "rayservices.ray.io"
SERVICEMONITOR_CRD = "servicemonitors.monitoring.coreos.com"


@dataclass(frozen=True)
class Context:
    kube: kube_mod.Kube
    settings: resources.Settings
    gateway_status: spend.GatewayStatusReader | None = None
    evented: set[tuple[str, str, str, str]] = field(default_factory=set)
    """(kind, namespace, name, message) of InvalidSpec Events already recorded."""
    stats: spend.StatsThrottle = field(default_factory=spend.StatsThrottle)
    """Rate limit of RoutingPolicy.status.stats writes."""


def _generation(body: dict[str, Any]) -> int | None:
    generation = body.get("metadata", {}).get("generation")
    return int(generation) if generation is not None else None


def _conditions(body: dict[str, Any]) -> list[dict[str, Any]]:
    return list((body.get("status") or {}).get("conditions") or [])


def _parse(model: type[pydantic.BaseModel], body: dict[str, Any]) -> Any:
    clean = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
    meta = clean.get("metadata", {})
    clean["metadata"] = {
        k: meta[k]
        for k in ("name", "namespace", "labels", "annotations", "generation")
        if k in meta
    }
    return model.model_validate(clean)


def _invalid_lines(model: type[pydantic.BaseModel], error: pydantic.ValidationError) -> list[str]:
    """``field: reason`` for each problem of an object the models reject (one stored
    before the CRD was tightened, for instance)."""
    found = problems_mod.problems_from_error(error, model=model, source="", kind="", name=None)
    return [f"{p.path}: {p.message}" if p.path else p.message for p in found]


def _parse_each(
    model: type[pydantic.BaseModel], bodies: Sequence[dict[str, Any]]
) -> tuple[list[Any], dict[str, list[str]]]:
    """The objects that parse, and name -> problems for those that do not."""
    parsed: list[Any] = []
    invalid: dict[str, list[str]] = {}
    for body in bodies:
        try:
            parsed.append(_parse(model, body))
        except pydantic.ValidationError as error:
            invalid[_name(body)] = _invalid_lines(model, error)
    return parsed, invalid


def _left_out(lines: Sequence[str]) -> str:
    return "Left out of the gateway, fix the spec: " + "; ".join(lines)


async def _invalid_status(
    ctx: Context,
    body: dict[str, Any],
    lines: Sequence[str],
    *,
    extra: Sequence[cond.ConditionType] = (),
) -> None:
    """Ready=False (and each of ``extra`` True) with reason InvalidSpec naming the fields."""
    generation = _generation(body)
    message = _left_out(lines)[:32768]
    updates = [(cond.ConditionType.READY, False, cond.Reason.INVALID_SPEC, message)]
    updates += [(t, True, cond.Reason.INVALID_SPEC, message) for t in extra]
    conds = cond.set_conditions(_conditions(body), generation=generation, updates=updates)
    try:
        await status.write(ctx.kube, body, {"conditions": conds, "observedGeneration": generation})
    except kube_mod.KubeError as error:
        if error.status != 422:
            raise
        # The API server validates the whole object on a status write: one stored before
        # the CRD was tightened, and now invalid where CEL cannot ratchet (a pattern that
        # does not compile), cannot carry a condition. An Event says it instead, once.
        meta = body["metadata"]
        key = (str(body.get("kind")), meta["namespace"], meta["name"], message)
        if key not in ctx.evented:
            ctx.evented.add(key)
            await failures.post_event(
                ctx.kube, body, reason=str(cond.Reason.INVALID_SPEC), message=message
            )


# ----------------------------------------------------------------------------- pools


@dataclass(frozen=True)
class RayServiceState:
    """What a pool's status mirrors from its RayService's status (KubeRay writes it)."""

    ready: int
    """Ready workers of the active RayCluster: the replicas that serve now."""
    serving: bool
    message: str
    active: str | None = None
    pending: str | None = None

    @property
    def upgrading(self) -> bool:
        """KubeRay is rolling to a new RayCluster while the active one serves."""
        return bool(self.active and self.pending)


def rayservice_state(live: dict[str, Any]) -> RayServiceState:
    """The state of a RayService as read from its status."""
    st = live.get("status") or {}
    active = st.get("activeServiceStatus") or {}
    cluster = active.get("rayClusterStatus") or {}
    ready_cond = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
    message = (ready_cond or {}).get("message") or st.get("serviceStatus") or "waiting for KubeRay"
    return RayServiceState(
        ready=int(cluster.get("readyWorkerReplicas") or 0),
        serving=bool(ready_cond and ready_cond.get("status") == "True"),
        message=str(message),
        active=active.get("rayClusterName") or None,
        pending=(st.get("pendingServiceStatus") or {}).get("rayClusterName") or None,
    )


def pool_condition_updates(
    state: RayServiceState,
) -> list[tuple[cond.ConditionType, bool, cond.Reason, str]]:
    """Ready mirrors KubeRay's Ready; Progressing is True while KubeRay creates the first
    RayCluster or rolls to a new one (the old one keeps serving, so Ready stays)."""
    progressing: tuple[bool, cond.Reason, str]
    if state.upgrading:
        progressing = (
            True,
            cond.Reason.RAYSERVICE_UPGRADING,
            f"Rolling to a new RayCluster ({state.pending}) for the changed spec; "
            f"{state.active} keeps serving until the new cluster's Serve application "
            "is RUNNING",
        )
    elif not state.serving:
        progressing = (True, cond.Reason.RAYSERVICE_PENDING, state.message)
    else:
        progressing = (False, cond.Reason.RECONCILED, state.message)
    ready_reason = cond.Reason.RAYSERVICE_READY if state.serving else cond.Reason.RAYSERVICE_PENDING
    return [
        (cond.ConditionType.DEGRADED, False, cond.Reason.RECONCILED, "RayService applied"),
        (cond.ConditionType.READY, state.serving, ready_reason, state.message),
        (cond.ConditionType.PROGRESSING, *progressing),
    ]


def parse_pool(body: dict[str, Any]) -> v1alpha1.LocalModelPool:
    """The typed pool of a raw body (status and server-managed metadata dropped)."""
    pool: v1alpha1.LocalModelPool = _parse(v1alpha1.LocalModelPool, body)
    return pool


def desired_pool_replicas(pool: v1alpha1.LocalModelPool, status: dict[str, Any] | None) -> int:
    """Replicas the pool should run: the autoscaler's last decision (kept in
    ``status.replicas.desired``) when autoscaling is on, else the spec's initial count."""
    spec = pool.spec.replicas
    initial = spec.initial if spec.initial is not None else max(spec.min, 1)
    if not pool.spec.autoscaling.enabled:
        return initial
    decided = ((status or {}).get("replicas") or {}).get("desired")
    if not isinstance(decided, int):
        return initial
    return min(max(decided, spec.min), spec.max)


def _ray_cluster_names(rayservice: dict[str, Any]) -> list[str]:
    st = rayservice.get("status") or {}
    names = {
        (st.get(key) or {}).get("rayClusterName")
        for key in ("activeServiceStatus", "pendingServiceStatus")
    }
    return sorted(n for n in names if n)


async def scale_ray_clusters(
    kube: kube_mod.Kube, rayservice: dict[str, Any], *, replicas: int
) -> list[str]:
    """Sets the model worker group's replicas on the RayService's RayClusters.

    KubeRay hashes a RayService's cluster spec with replicas muted, so a replicas-only
    RayService edit never reaches a running RayCluster; an autoscaler is meant to write
    the RayCluster's worker group directly, which is what this does (a JSON patch whose
    ``test`` pins the group it changes). Returns the clusters it changed.
    """
    namespace = rayservice["metadata"]["namespace"]
    changed: list[str] = []
    for name in _ray_cluster_names(rayservice):
        cluster = await kube.get("RayCluster", namespace=namespace, name=name)
        groups = ((cluster or {}).get("spec") or {}).get("workerGroupSpecs") or []
        for index, group in enumerate(groups):
            if (
                group.get("groupName") != resources.WORKER_GROUP
                or group.get("replicas") == replicas
            ):
                continue
            at = f"/spec/workerGroupSpecs/{index}"
            try:
                await kube.patch_json(
                    "RayCluster",
                    namespace=namespace,
                    name=name,
                    operations=[
                        {"op": "test", "path": f"{at}/groupName", "value": resources.WORKER_GROUP},
                        {"op": "add", "path": f"{at}/replicas", "value": replicas},
                    ],
                )
            except kube_mod.KubeError as exc:
                # Gone or reshaped meanwhile: the RayService's next event brings a retry.
                if exc.status in (404, 409, 422):
                    continue
                raise
            changed.append(name)
    return changed


async def _fresh_status(ctx: Context, body: dict[str, Any]) -> dict[str, Any] | None:
    """The pool's status as stored now: a reconcile queued behind an autoscaling decision
    must render the decision, not its older snapshot's replicas."""
    meta = body["metadata"]
    live = await ctx.kube.get("LocalModelPool", namespace=meta["namespace"], name=meta["name"])
    return (live or body).get("status")


async def reconcile_pool(
    ctx: Context, body: dict[str, Any], *, policies: Sequence[dict[str, Any]]
) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    generation = _generation(body)
    conds = _conditions(body)
    try:
        pool = parse_pool(body)
    except pydantic.ValidationError as error:
        lines = _invalid_lines(v1alpha1.LocalModelPool, error)
        await _invalid_status(ctx, body, lines, extra=[cond.ConditionType.DEGRADED])
        return
    autoscaled = pool.spec.autoscaling.enabled
    decided = await _fresh_status(ctx, body) if autoscaled else None
    desired_replicas = desired_pool_replicas(pool, decided)
    pinned = desired_replicas if autoscaled else None
    ready = 0
    endpoint: str | None = None
    if not await ctx.kube.has_crd(RAYSERVICE_CRD):
        conds = cond.set_conditions(conds, generation=generation, updates=_kuberay_missing())
    else:
        state = await _apply_rayservice(ctx, body, pool, policies=policies, pinned=pinned)
        if state is None:
            return
        ready = state.ready
        endpoint = resources.serve_endpoint(pool=name, namespace=namespace)
        conds = cond.set_conditions(
            conds, generation=generation, updates=pool_condition_updates(state)
        )
    pool_metrics.observe_pool(namespace=namespace, pool=pool, desired=desired_replicas, ready=ready)
    # One writer per field: with autoscaling on, ``replicas.desired`` belongs to the
    # autoscaler (``autoscaling.write_replicas``); a reconcile only reports ``ready``.
    replicas: dict[str, Any] = {"ready": ready}
    if not autoscaled:
        replicas["desired"] = desired_replicas
    desired_status: dict[str, Any] = {
        "conditions": conds,
        "observedGeneration": generation,
        "replicas": replicas,
    }
    if endpoint is not None:
        desired_status["endpoint"] = endpoint
    await status.write(ctx.kube, body, desired_status)


def _kuberay_missing() -> list[tuple[cond.ConditionType, bool, cond.Reason, str]]:
    message = (
        f"The RayService CRD ({RAYSERVICE_CRD}) is not installed: install KubeRay "
        "(helm install kuberay-operator kuberay/kuberay-operator) and the pool will "
        "be reconciled automatically."
    )
    return [
        (cond.ConditionType.DEGRADED, True, cond.Reason.KUBERAY_MISSING, message),
        (cond.ConditionType.READY, False, cond.Reason.KUBERAY_MISSING, message),
        (cond.ConditionType.PROGRESSING, False, cond.Reason.KUBERAY_MISSING, message),
    ]


async def _apply_rayservice(
    ctx: Context,
    body: dict[str, Any],
    pool: v1alpha1.LocalModelPool,
    *,
    policies: Sequence[dict[str, Any]],
    pinned: int | None,
) -> RayServiceState | None:
    """Applies the pool's RayService (and pins its clusters' workers when autoscaled);
    returns its state, or None when the pool does not compile (its status says why)."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    parsed_policies, _ = _parse_each(v1alpha1.RoutingPolicy, policies)
    method = compile_gateway.confidence_methods(parsed_policies).get(name)
    try:
        serving = compile_serving.pool_serving_config(
            pool, confidence_method=method, replicas=pinned
        )
    except Exception as error:  # this pool's failure stays this pool's
        lines = compile_gateway.describe_failure(error)
        await _invalid_status(ctx, body, lines, extra=[cond.ConditionType.DEGRADED])
        return None
    desired = resources.build_rayservice(
        pool=pool,
        serving=serving,
        namespace=namespace,
        settings=ctx.settings,
        owners=[resources.owner_reference(body)],
    )
    live, applied = await children.ensure(ctx.kube, desired)
    if applied:
        log.info("Applied RayService namespace=%s name=%s", namespace, name)
    if pinned is not None:
        for cluster in await scale_ray_clusters(ctx.kube, live, replicas=pinned):
            log.info(
                "Scaled RayCluster namespace=%s name=%s workers=%d", namespace, cluster, pinned
            )
    return await _with_cluster_readiness(ctx.kube, rayservice_state(live), namespace=namespace)


async def _with_cluster_readiness(
    kube: kube_mod.Kube, state: RayServiceState, *, namespace: str
) -> RayServiceState:
    """Ready workers read from the active RayCluster itself: the copy KubeRay keeps in
    the RayService's status can lag the cluster's own for minutes."""
    if state.active is None:
        return state
    cluster = await kube.get("RayCluster", namespace=namespace, name=state.active)
    ready = ((cluster or {}).get("status") or {}).get("readyWorkerReplicas")
    if not isinstance(ready, int):
        return state
    return dataclasses.replace(state, ready=ready)


# ----------------------------------------------------------------------------- gateway


async def reconcile_namespace(
    ctx: Context,
    namespace: str,
    *,
    pools: Sequence[dict[str, Any]],
    experts: Sequence[dict[str, Any]],
    policies: Sequence[dict[str, Any]],
    tenants: Sequence[dict[str, Any]] = (),
) -> None:
    """Renders the namespace's gateway from all its policies and updates policy status.

    An object that does not parse or compile is left out (its own status says why); the
    gateway is rendered from the rest.
    """
    if not policies:
        # Children carry ownerReferences to every policy: the garbage collector removes
        # them once the last policy is gone.
        return
    pool_objs, bad_pools = _parse_each(v1alpha1.LocalModelPool, pools)
    expert_objs, bad_experts = _parse_each(v1alpha1.CloudExpert, experts)
    policy_objs, invalid = _parse_each(v1alpha1.RoutingPolicy, policies)
    # A Tenant that cannot be read is left out: its keys do not work until it is fixed.
    tenant_objs, _ = _parse_each(v1alpha1.Tenant, tenants)
    compiled = _compile_namespace(
        ctx, namespace, pool_objs, expert_objs, policy_objs, tenant_objs, bad_experts
    )
    invalid.update(_compiled_policy_problems(compiled))
    gateway_ready = await _apply_gateway(
        ctx, namespace, compiled, expert_objs, policies, tenant_objs=tenant_objs
    )
    broken = {f"LocalModelPool/{n}" for n in bad_pools} | {f"CloudExpert/{n}" for n in bad_experts}
    unusable = _unusable_experts(experts, compiled, unparsed=bad_experts)
    ledger_warning = resources.ledger_replicas_warning(ctx.settings)
    if ledger_warning is not None:
        log.warning("Gateway namespace=%s: %s", namespace, ledger_warning)
    document = await ctx.gateway_status.read(namespace) if ctx.gateway_status else None
    verdicts = [
        (
            body,
            _Verdict(
                invalid=invalid.get(_name(body), []),
                missing=[
                    f"{ref} (invalid, see its status)" if ref in broken else ref
                    for ref in compiled.missing.get(_name(body), [])
                ],
                gateway_ready=gateway_ready,
                unusable=_policy_unusable(policy, unusable),
                ledger_warning=ledger_warning,
                stats=ctx.stats.choose(
                    f"{namespace}/{_name(body)}",
                    fresh=spend.policy_stats(document, policy=_name(body)),
                    stored=(body.get("status") or {}).get("stats"),
                ),
                document=document,
            ),
        )
        for body, policy in _with_models(policies, policy_objs)
    ]
    await _write_policy_statuses(ctx, verdicts)


def _compiled_policy_problems(compiled: compile_gateway.CompiledGateway) -> dict[str, list[str]]:
    """Policy name -> why the compiler left it out."""
    return {
        key.split("/", 1)[1]: lines
        for key, lines in compiled.invalid.items()
        if key.split("/", 1)[0] == "RoutingPolicy"
    }


def _compile_namespace(
    ctx: Context,
    namespace: str,
    pool_objs: Sequence[v1alpha1.LocalModelPool],
    expert_objs: Sequence[v1alpha1.CloudExpert],
    policy_objs: Sequence[v1alpha1.RoutingPolicy],
    tenant_objs: Sequence[v1alpha1.Tenant],
    bad_experts: dict[str, list[str]],
) -> compile_gateway.CompiledGateway:
    shared = ctx.settings.redis_url is not None or ctx.settings.redis_secret is not None
    return compile_gateway.gateway_config(
        namespace=namespace,
        pools=pool_objs,
        experts=expert_objs,
        policies=policy_objs,
        pool_endpoint=lambda p: resources.serve_endpoint(pool=p.metadata.name, namespace=namespace),
        credentials="file",
        ledger_url=ctx.settings.redis_url,
        checkpoint_path=None if shared else "/var/lib/kascade/ledger.json",
        unparsed_experts=bad_experts,
        tenants=tenant_objs,
        require_api_key=True,
        redis_secret=ctx.settings.redis_secret is not None,
    )


async def _write_policy_statuses(
    ctx: Context, verdicts: Sequence[tuple[dict[str, Any], _Verdict]]
) -> None:
    """Writes every policy's status; one failed write does not skip the others."""
    errors: list[kube_mod.KubeError] = []
    for body, verdict in verdicts:
        try:
            await _policy_status(ctx, body, verdict)
        except kube_mod.KubeError as error:
            errors.append(error)
    if errors:
        raise errors[0]


async def _apply_gateway(
    ctx: Context,
    namespace: str,
    compiled: compile_gateway.CompiledGateway,
    expert_objs: Sequence[v1alpha1.CloudExpert],
    policies: Sequence[dict[str, Any]],
    *,
    tenant_objs: Sequence[v1alpha1.Tenant] = (),
) -> bool:
    """Applies the gateway's children; returns whether its Deployment is available."""
    used = set(compiled.config.experts)
    service_monitor = await ctx.kube.has_crd(SERVICEMONITOR_CRD)
    owners = [resources.owner_reference(p) for p in sorted(policies, key=_name)]
    gateway_ready = False
    for desired in resources.build_gateway(
        namespace=namespace,
        config=compiled.config,
        experts=[e for e in expert_objs if e.metadata.name in used],
        settings=ctx.settings,
        owners=owners,
        service_monitor=service_monitor,
        tenants=list(tenant_objs),
    ):
        live, applied = await children.ensure(ctx.kube, desired)
        if applied:
            log.info(
                "Applied %s namespace=%s name=%s",
                desired["kind"],
                namespace,
                desired["metadata"]["name"],
            )
        if desired["kind"] == "Deployment":
            gateway_ready = int((live.get("status") or {}).get("availableReplicas") or 0) > 0
    return gateway_ready


def _with_models(
    bodies: Sequence[dict[str, Any]], models: Sequence[v1alpha1.RoutingPolicy]
) -> list[tuple[dict[str, Any], v1alpha1.RoutingPolicy | None]]:
    by_name = {m.metadata.name: m for m in models}
    return [(body, by_name.get(_name(body))) for body in bodies]


def _unusable_experts(
    experts: Sequence[dict[str, Any]],
    compiled: compile_gateway.CompiledGateway,
    *,
    unparsed: Mapping[str, list[str]],
) -> dict[str, str]:
    """Expert name -> why it cannot take escalations now, for the experts that cannot."""
    why: dict[str, str] = {}
    for body in experts:
        name = _name(body)
        spec = body.get("spec") or {}
        states = {c.get("type"): c.get("status") for c in _conditions(body)}
        if spec.get("suspend"):
            why[name] = "suspended"
        elif name in unparsed or f"CloudExpert/{name}" in compiled.invalid:
            why[name] = "invalid spec"
        elif states.get(cond.ConditionType.CREDENTIALS_MISSING) == "True":
            why[name] = "credentials missing"
        elif states.get(cond.ConditionType.BUDGET_EXHAUSTED) == "True":
            why[name] = "budget exhausted"
    return why


def _policy_unusable(
    policy: v1alpha1.RoutingPolicy | None, unusable: dict[str, str]
) -> dict[str, str] | None:
    """Each expert of an arm that cannot escalate (all its listed experts unusable), and
    why; None when every arm can. An arm is the policy's own expert list (used by callers
    of a variant without an experts override) or a variant's override."""
    if policy is None:
        return None
    stuck: dict[str, str] = {}
    for variant, listed in _expert_arms(policy):
        if not listed or not all(name in unusable for name in listed):
            continue  # an empty list keeps the arm's requests local on purpose
        for name in listed:
            stuck[name if variant is None else f"{name} in variant {variant}"] = unusable[name]
    return stuck or None


def _expert_arms(policy: v1alpha1.RoutingPolicy) -> list[tuple[str | None, list[str]]]:
    """(variant name or None for the policy's own list, experts) for every list in use."""
    spec = policy.spec
    arms: list[tuple[str | None, list[str]]] = [
        (v.name, list(v.overrides.experts))
        for v in spec.variants
        if v.overrides.experts is not None
    ]
    if len(arms) < len(spec.variants) or not spec.variants:
        arms.insert(0, (None, list(spec.experts)))
    return arms


def _name(body: dict[str, Any]) -> str:
    return str(body["metadata"]["name"])


@dataclass(frozen=True)
class _Verdict:
    """What the namespace reconcile found for one policy."""

    invalid: list[str]
    missing: list[str]
    gateway_ready: bool
    unusable: dict[str, str] | None
    ledger_warning: str | None = None
    """Why the gateway runs fewer replicas than asked (no Redis ledger), if it does."""
    stats: dict[str, Any] | None = None
    document: dict[str, Any] | None = None
    """The gateway's status document (read once per namespace), if it answered."""


async def _policy_status(ctx: Context, body: dict[str, Any], verdict: _Verdict) -> None:
    generation = _generation(body)
    conds = _conditions(body)
    if verdict.invalid:
        await _invalid_status(ctx, body, verdict.invalid)
        return
    if verdict.missing:
        message = "Missing: " + ", ".join(verdict.missing) + " (in this namespace)"
        updates = [
            (
                cond.ConditionType.REFERENCES_RESOLVED,
                False,
                cond.Reason.MISSING_REFERENCES,
                message,
            ),
            (cond.ConditionType.READY, False, cond.Reason.MISSING_REFERENCES, message),
        ]
    else:
        updates = [
            (
                cond.ConditionType.REFERENCES_RESOLVED,
                True,
                cond.Reason.ALL_REFERENCES_FOUND,
                "All references exist",
            ),
            (
                cond.ConditionType.READY,
                verdict.gateway_ready,
                cond.Reason.RECONCILED,
                "Gateway is serving this policy"
                if verdict.gateway_ready
                else "Waiting for the gateway Deployment to become available",
            ),
            _degraded(body, verdict.unusable, verdict.ledger_warning),
        ]
    conds = cond.set_conditions(conds, generation=generation, updates=updates)
    desired: dict[str, Any] = {"conditions": conds, "observedGeneration": generation}
    if not verdict.missing:
        desired.update(await _learned_quality(ctx, body, verdict.document))
    if verdict.stats is not None:
        desired["stats"] = verdict.stats
    await status.write(ctx.kube, body, desired)


async def _learned_quality(
    ctx: Context, body: dict[str, Any], document: dict[str, Any] | None
) -> dict[str, Any]:
    """``quality`` mirrored from the gateway (policies with a target), and an Event for
    every learned threshold that moved since the status last written."""
    learned, moved = quality.policy_quality(
        document, policy=_name(body), previous=body.get("status")
    )
    for message in moved:
        log.info("Learned threshold moved policy=%s: %s", _name(body), message)
        await events.record(ctx.kube, body, reason="LearnedThreshold", message=message)
    return {} if learned is None else {"quality": learned}


def _degraded(
    body: dict[str, Any], unusable: dict[str, str] | None, ledger_warning: str | None = None
) -> tuple[cond.ConditionType, bool, cond.Reason, str]:
    """Degraded=True when no listed expert can take escalations now, or when the gateway
    runs one replica instead of the several asked for (in-memory ledger)."""
    if unusable is None and ledger_warning is not None:
        return (cond.ConditionType.DEGRADED, True, cond.Reason.LEDGER_NEEDS_REDIS, ledger_warning)
    if unusable is None:
        return (
            cond.ConditionType.DEGRADED,
            False,
            cond.Reason.EXPERTS_USABLE,
            "At least one expert can take escalations (or none is listed)",
        )
    fallback = ((body.get("spec") or {}).get("fallback") or {}).get("whenExpertsUnavailable")
    outcome = (
        "escalations fail with 503 (fallback.whenExpertsUnavailable: error)"
        if fallback == "error"
        else "escalations degrade to the local answer"
    )
    reasons = ", ".join(f"{name} ({why})" for name, why in unusable.items())
    return (
        cond.ConditionType.DEGRADED,
        True,
        cond.Reason.NO_USABLE_EXPERT,
        f"No expert can take escalations: {reasons}; {outcome}",
    )


# ----------------------------------------------------------------------------- experts


async def reconcile_expert(ctx: Context, body: dict[str, Any]) -> None:
    """Checks the expert's Secret (CredentialsMissing until it exists, key included)."""
    namespace = body["metadata"]["namespace"]
    generation = _generation(body)
    try:
        expert: v1alpha1.CloudExpert = _parse(v1alpha1.CloudExpert, body)
    except pydantic.ValidationError as error:
        await _invalid_status(ctx, body, _invalid_lines(v1alpha1.CloudExpert, error))
        return
    failures = compile_gateway.expert_failures(expert)
    missing_reason, message = await _credentials_check(ctx, expert, namespace)
    ready = (
        (cond.ConditionType.READY, False, cond.Reason.INVALID_SPEC, _left_out(failures))
        if failures
        else (
            cond.ConditionType.READY,
            missing_reason is None,
            missing_reason or cond.Reason.RECONCILED,
            message,
        )
    )
    conds = cond.set_conditions(
        _conditions(body),
        generation=generation,
        updates=[
            (
                cond.ConditionType.CREDENTIALS_MISSING,
                missing_reason is not None,
                missing_reason or cond.Reason.SECRET_FOUND,
                message,
            ),
            ready,
        ],
    )
    desired: dict[str, Any] = {"conditions": conds, "observedGeneration": generation}
    if ctx.gateway_status is not None:
        document = await ctx.gateway_status.read(namespace)
        desired.update(_mirrored_spend(document, body, conds, generation))
    await status.write(ctx.kube, body, desired)


async def _credentials_check(
    ctx: Context, expert: v1alpha1.CloudExpert, namespace: str
) -> tuple[cond.Reason | None, str]:
    """Why the credential is missing (None when present or not needed), and a message."""
    if expert.spec.credentials is None:
        return None, "No credentials configured"
    ref = expert.spec.credentials.secret_ref
    secret = await ctx.kube.get("Secret", namespace=namespace, name=ref.name)
    if secret is None:
        return (
            cond.Reason.SECRET_NOT_FOUND,
            f"Secret {ref.name!r} not found in namespace {namespace!r}",
        )
    if ref.key not in (secret.get("data") or {}) and ref.key not in (
        secret.get("stringData") or {}
    ):
        return cond.Reason.SECRET_KEY_MISSING, f"Secret {ref.name!r} has no key {ref.key!r}"
    return None, "Credentials found"


def _mirrored_spend(
    document: Any, body: dict[str, Any], conds: list[dict[str, Any]], generation: int | None
) -> dict[str, Any]:
    """The gateways' spend for this expert, with BudgetExhausted set from it."""
    mirrored = spend.expert_status(
        document, expert=body["metadata"]["name"], previous=body.get("status")
    )
    if not mirrored:
        return {}
    exhausted = mirrored["spend"]["remainingUSD"] <= 0
    conditions = cond.set_condition(
        conds,
        type_=cond.ConditionType.BUDGET_EXHAUSTED,
        status=exhausted,
        reason=cond.Reason.BUDGET_SPENT if exhausted else cond.Reason.WITHIN_BUDGET,
        message=f"Spent ${mirrored['spend']['spentUSD']:g} in the current window, "
        f"${mirrored['spend']['remainingUSD']:g} left",
        generation=generation,
    )
    return {**mirrored, "conditions": conditions}
