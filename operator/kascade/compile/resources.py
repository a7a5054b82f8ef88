"""Pure builders: Kascade objects -> the Kubernetes objects that run them.

Object in, manifest dict out; no API calls. The operator applies these with server-side
apply; ``kascade render`` prints them for review.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import yaml

from kascade.api import v1alpha1
from kascade.compile import gateway as compile_gateway
from kascade.gateway import config as gw
from kascade.serving import config as serving_config

Manifest = dict[str, Any]

SPEC_HASH = "kascade.io/spec-hash"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kascade"}
GATEWAY_NAME = "kascade-gateway"
GATEWAY_PORT = 8080
GATEWAY_ADMIN_PORT = 9090
"""/metrics and /v1/kascade/status: on the admin Service only, which the NetworkPolicy
opens to the operator's namespace (and the monitoring namespaces), never to callers."""
GATEWAY_ADMIN_NAME = "kascade-gateway-admin"
ADMIN_LABEL = {"kascade.io/port": "admin"}
GATEWAY_CONFIG_DIR = "/etc/kascade/gateway"
GATEWAY_CONFIG_FILE = "config.json"
SERVE_PORT = 8000
# The RayCluster worker group that holds a pool's model replicas (one replica per worker).
WORKER_GROUP = "model"
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class Settings:
    """Cluster-wide defaults (from the operator's environment, set by the Helm chart)."""

    gateway_image: str = "ghcr.io/kascade/gateway:0.1.0"
    serving_image: str = "ghcr.io/kascade/serving:0.1.0"
    gateway_image_pull_policy: str = "IfNotPresent"
    serving_image_pull_policy: str = "IfNotPresent"
    ray_version: str = "2.40.0"
    gateway_replicas: int = 1
    gateway_cpu_request: str = "250m"
    gateway_memory_request: str = "256Mi"
    gateway_memory_limit: str = "512Mi"
    gateway_hpa_max: int = 5
    redis_url: str | None = None
    ledger_storage_class: str | None = None
    """StorageClass of the in-memory ledger's checkpoint volume (None: the cluster's
    default class)."""
    ledger_storage_size: str = "1Gi"
    redis_secret: str | None = None
    """Name of a Secret in each gateway namespace with keys `url` and (optional)
    `password`; takes the place of ``redis_url`` so no password lands in a ConfigMap."""
    gateway_admitted_namespaces: tuple[str, ...] = ()
    """Namespaces (besides the gateway's own) whose pods may call the gateway."""
    gateway_admin_namespaces: tuple[str, ...] = ()
    """Namespaces whose pods may read the admin port (the operator's, Prometheus')."""


LEDGER_CLAIM = f"{GATEWAY_NAME}-ledger"


def _shared_ledger(settings: Settings) -> bool:
    """Whether the gateways keep their ledger in Redis (by URL or by Secret)."""
    return settings.redis_url is not None or settings.redis_secret is not None


def ledger_replicas_warning(settings: Settings) -> str | None:
    """Why the gateway runs fewer replicas than asked, if it does: budgets are exact
    across replicas only on the shared Redis ledger."""
    if not _shared_ledger(settings) and settings.gateway_replicas > 1:
        return (
            f"gateway replicas {settings.gateway_replicas} requested, but the ledger is in "
            "memory (no gateway Redis URL): running 1 replica so that one ledger holds "
            "every budget; set the Redis URL to run more"
        )
    return None


def ledger_claim(*, namespace: str, labels: dict[str, str], settings: Settings) -> Manifest:
    """The in-memory ledger's checkpoint volume. No ownerReferences: deleting the last
    RoutingPolicy must not forget what was spent in the current windows."""
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": settings.ledger_storage_size}},
    }
    if settings.ledger_storage_class is not None:
        spec["storageClassName"] = settings.ledger_storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(LEDGER_CLAIM, namespace, labels=labels, owners=[]),
        "spec": spec,
    }


def spec_hash(manifest: Manifest) -> str:
    """A stable hash of what the operator wants a child to look like."""
    body = {k: v for k, v in manifest.items() if k != "status"}
    meta = dict(body.get("metadata", {}))
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if k != SPEC_HASH}
    meta["annotations"] = annotations
    body["metadata"] = meta
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def with_hash(manifest: Manifest) -> Manifest:
    manifest["metadata"].setdefault("annotations", {})[SPEC_HASH] = spec_hash(manifest)
    return manifest


def owner_reference(obj: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to a Kascade object given as its raw body (needs uid)."""
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": False,
        "blockOwnerDeletion": True,
    }


def _meta(
    name: str, namespace: str, *, labels: dict[str, str], owners: list[dict[str, Any]]
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {**MANAGED_BY, **labels},
    }
    if owners:
        meta["ownerReferences"] = owners
    return meta


def serve_endpoint(*, pool: str, namespace: str) -> str:
    """The in-cluster URL of a pool's Serve application (KubeRay's serve Service)."""
    return f"http://{pool}-serve-svc.{namespace}.svc:{SERVE_PORT}"


MODEL_HASH = "kascade.io/model-hash"
"""Annotation on the worker pods' template: a hash of the pool's model spec. KubeRay
hashes the RayService's cluster spec to decide on an upgrade, and ``serveConfigV2``
is not part of it; carrying the model here makes a model change a cluster change, so
KubeRay rolls it to a new RayCluster (blue/green) instead of redeploying Serve in place
on workers that have no room for the new replicas beside the old ones."""

UPGRADE_STRATEGY = "NewCluster"
"""KubeRay's zero-downtime upgrade: a changed cluster spec gets a pending RayCluster;
the Services switch to it once its Serve application is RUNNING, and the old cluster
is deleted after ``rayClusterDeletionDelaySeconds`` (KubeRay's default, 60 s). Set
explicitly: ``None`` would update the running cluster in place, and KubeRay's default
depends on its ``ENABLE_ZERO_DOWNTIME`` environment variable."""


def model_hash(serving: serving_config.PoolServingConfig) -> str:
    """A stable hash of what a replica loads (``serving.model``)."""
    body = json.dumps(serving.model.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def build_rayservice(
    *,
    pool: v1alpha1.LocalModelPool,
    serving: serving_config.PoolServingConfig,
    namespace: str,
    settings: Settings,
    owners: list[dict[str, Any]],
) -> Manifest:
    """The KubeRay RayService that serves one LocalModelPool."""
    name = pool.metadata.name
    manifest: Manifest = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": _meta(name, namespace, labels={"kascade.io/pool": name}, owners=owners),
        "spec": {
            "upgradeStrategy": {"type": UPGRADE_STRATEGY},
            "serveConfigV2": _serve_config(name, serving),
            "rayClusterConfig": {
                "rayVersion": settings.ray_version,
                "enableInTreeAutoscaling": serving.replicas.min < serving.replicas.max,
                "headGroupSpec": _head_group(settings),
                "workerGroupSpecs": [_worker_group(pool, serving, settings)],
            },
        },
    }
    return with_hash(manifest)


def _serve_config(name: str, serving: serving_config.PoolServingConfig) -> str:
    """``serveConfigV2``: the pool's one application, built from its serving config."""
    application = {
        "name": name,
        "route_prefix": "/",
        "import_path": "kascade.serving.app:build_app",
        "args": serving.to_args(),
    }
    return yaml.safe_dump({"applications": [application]}, sort_keys=True)


def _head_group(settings: Settings) -> Manifest:
    """The head runs no replicas (``num-cpus: 0``), so model pods land only on pool nodes."""
    container = {
        "name": "ray-head",
        "image": settings.serving_image,
        "imagePullPolicy": settings.serving_image_pull_policy,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "ports": [
            {"containerPort": 6379, "name": "gcs"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
            {"containerPort": SERVE_PORT, "name": "serve"},
        ],
    }
    return {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": {"spec": {"containers": [container]}},
    }


def _worker_group(
    pool: v1alpha1.LocalModelPool, serving: serving_config.PoolServingConfig, settings: Settings
) -> Manifest:
    """The ``model`` worker group: as many Ray nodes as Serve replicas (one per worker)."""
    initial = (
        serving.replicas.initial
        if serving.replicas.initial is not None
        else max(serving.replicas.min, 1)
    )
    return {
        "groupName": WORKER_GROUP,
        "replicas": initial,
        "minReplicas": pool.spec.replicas.min,
        "maxReplicas": pool.spec.replicas.max,
        "rayStartParams": {},
        "template": {
            "metadata": {"annotations": {MODEL_HASH: model_hash(serving)}},
            "spec": _worker_pod(pool, settings),
        },
    }


def _worker_pod(pool: v1alpha1.LocalModelPool, settings: Settings) -> Manifest:
    """One worker's pod: the pool's requests and limits, and its placement."""
    spec = pool.spec
    requests: dict[str, Any] = {
        "cpu": str(spec.resources.cpu),
        "memory": str(spec.resources.memory),
    }
    limits: dict[str, Any] = {"memory": str(spec.resources.memory)}
    if spec.resources.gpu:
        limits["nvidia.com/gpu"] = str(spec.resources.gpu)
    worker_pod: dict[str, Any] = {
        "containers": [
            {
                "name": "ray-worker",
                "image": settings.serving_image,
                "imagePullPolicy": settings.serving_image_pull_policy,
                "resources": {"requests": requests, "limits": limits},
                "securityContext": {"allowPrivilegeEscalation": False},
            }
        ],
    }
    placement = spec.placement
    if placement.node_selector:
        worker_pod["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        worker_pod["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in placement.tolerations
        ]
    if placement.affinity is not None and placement.affinity.to_manifest():
        worker_pod["affinity"] = placement.affinity.to_manifest()
    return worker_pod


def secret_volumes(experts: list[v1alpha1.CloudExpert]) -> tuple[list[Any], list[Any]]:
    """Volumes and mounts that put each referenced Secret key where the config expects it."""
    keys: dict[str, set[str]] = {}
    for expert in experts:
        if expert.spec.credentials is not None:
            ref = expert.spec.credentials.secret_ref
            keys.setdefault(ref.name, set()).add(ref.key)
    volumes, mounts = [], []
    for index, (secret, secret_keys) in enumerate(sorted(keys.items())):
        volume = f"secret-{index}"
        volumes.append(
            {
                "name": volume,
                "secret": {
                    "secretName": secret,
                    "items": [{"key": k, "path": k} for k in sorted(secret_keys)],
                    # A Secret that does not exist yet must not block the gateway pod;
                    # the CloudExpert reports CredentialsMissing instead.
                    "optional": True,
                },
            }
        )
        mounts.append(
            {
                "name": volume,
                "mountPath": f"{compile_gateway.SECRETS_MOUNT}/{secret}",
                "readOnly": True,
            }
        )
    return volumes, mounts


def tenant_volumes(
    tenants: list[v1alpha1.Tenant], *, redis_secret: str | None
) -> tuple[list[Any], list[Any]]:
    """Each Tenant's keys Secret mounted whole (the kubelet updates the files when the
    Secret changes, so keys rotate without a restart), and the Redis Secret."""
    volumes: list[Any] = []
    mounts: list[Any] = []
    for index, tenant in enumerate(sorted(tenants, key=lambda t: t.metadata.name)):
        volume = f"tenant-{index}"
        # Optional: a missing Secret means no key of that tenant works yet, not a dead pod.
        secret = {"secretName": tenant.spec.keys.secret_ref.name, "optional": True}
        volumes.append({"name": volume, "secret": secret})
        path = f"{compile_gateway.TENANTS_MOUNT}/{tenant.metadata.name}"
        mounts.append({"name": volume, "mountPath": path, "readOnly": True})
    if redis_secret is not None:
        items = [{"key": "url", "path": "url"}, {"key": "password", "path": "password"}]
        volumes.append(
            {
                "name": "redis",
                "secret": {"secretName": redis_secret, "items": items, "optional": True},
            }
        )
        mounts.append({"name": "redis", "mountPath": compile_gateway.REDIS_MOUNT, "readOnly": True})
    return volumes, mounts


def build_network_policy(
    *, namespace: str, selector: dict[str, str], settings: Settings, owners: list[dict[str, Any]]
) -> Manifest:
    """Admits callers from the gateway's namespace (and the admitted namespaces) to the
    API port, and only the admin namespaces to the admin port."""

    def namespaces(names: tuple[str, ...]) -> list[dict[str, Any]]:
        return [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": n}}}
            for n in sorted(set(names))
        ]

    callers = [{"podSelector": {}}, *namespaces(settings.gateway_admitted_namespaces)]
    ingress: list[dict[str, Any]] = [
        {"from": callers, "ports": [{"protocol": "TCP", "port": GATEWAY_PORT}]}
    ]
    if settings.gateway_admin_namespaces:
        ingress.append(
            {
                "from": namespaces(settings.gateway_admin_namespaces),
                "ports": [{"protocol": "TCP", "port": GATEWAY_ADMIN_PORT}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(GATEWAY_NAME, namespace, labels=selector, owners=owners),
        "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"],
                 "ingress": ingress},
    }  # fmt: skip


@dataclass(frozen=True)
class _GatewayMeta:
    """What every object of one namespace's gateway carries."""

    namespace: str
    labels: dict[str, str]
    owners: list[dict[str, Any]]

    def meta(self, name: str = GATEWAY_NAME, **extra_labels: str) -> dict[str, Any]:
        labels = {**self.labels, **extra_labels}
        return _meta(name, self.namespace, labels=labels, owners=self.owners)


def build_gateway(
    *,
    namespace: str,
    config: gw.GatewayConfig,
    experts: list[v1alpha1.CloudExpert],
    settings: Settings,
    owners: list[dict[str, Any]],
    service_monitor: bool,
    tenants: list[v1alpha1.Tenant] | None = None,
) -> list[Manifest]:
    """ConfigMap, Deployment, Services (API and admin), PDB, NetworkPolicy, the ledger's
    claim or an HPA (and ServiceMonitor) of a namespace's gateway."""
    labels = {"app.kubernetes.io/name": GATEWAY_NAME, "app.kubernetes.io/instance": namespace}
    g = _GatewayMeta(namespace=namespace, labels=labels, owners=owners)
    shared = _shared_ledger(settings)
    replicas = settings.gateway_replicas if shared else 1
    pod = _gateway_pod(experts=experts, tenants=tenants or [], settings=settings, shared=shared)
    objects: list[Manifest] = [
        _gateway_config_map(g, config),
        _gateway_deployment(g, pod=pod, replicas=replicas, shared=shared),
        *_gateway_services(g),
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": g.meta(),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
        },
        build_network_policy(
            namespace=namespace, selector=labels, settings=settings, owners=owners
        ),
    ]
    if shared:
        # Several replicas only keep budgets exact when they share the Redis ledger.
        objects.append(_gateway_hpa(g, replicas=replicas, settings=settings))
    else:
        objects.append(ledger_claim(namespace=namespace, labels=labels, settings=settings))
    if service_monitor:
        objects.append(_gateway_service_monitor(g))
    return [with_hash(obj) for obj in objects]


def _gateway_config_map(g: _GatewayMeta, config: gw.GatewayConfig) -> Manifest:
    config_json = json.dumps(
        config.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2, sort_keys=True
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": g.meta(),
        "data": {GATEWAY_CONFIG_FILE: config_json},
    }


def _gateway_pod(
    *,
    experts: list[v1alpha1.CloudExpert],
    tenants: list[v1alpha1.Tenant],
    settings: Settings,
    shared: bool,
) -> Manifest:
    """The pod spec: one restricted container, its config, state and Secret volumes."""
    volumes, mounts = secret_volumes(experts)
    # In memory, the ledger's checkpoint must outlive the pod (a PVC), and two pods
    # must never run at once (Recreate): each would keep its own ledger.
    state: dict[str, Any] = (
        {"emptyDir": {}} if shared else {"persistentVolumeClaim": {"claimName": LEDGER_CLAIM}}
    )
    t_volumes, t_mounts = tenant_volumes(tenants, redis_secret=settings.redis_secret)
    mounts = [
        {"name": "config", "mountPath": GATEWAY_CONFIG_DIR, "readOnly": True},
        {"name": "state", "mountPath": "/var/lib/kascade"},
        *mounts,
        *t_mounts,
    ]
    return {
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_gateway_container(settings, mounts)],
        "volumes": [
            {"name": "config", "configMap": {"name": GATEWAY_NAME}},
            {"name": "state", **state},
            *volumes,
            *t_volumes,
        ],
    }


def _gateway_container(settings: Settings, mounts: list[dict[str, Any]]) -> Manifest:
    probe = {"httpGet": {"port": "http"}, "periodSeconds": 10, "timeoutSeconds": 2}
    return {
        "name": "gateway",
        "image": settings.gateway_image,
        "imagePullPolicy": settings.gateway_image_pull_policy,
        "args": [
            "gateway",
            "--config",
            f"{GATEWAY_CONFIG_DIR}/{GATEWAY_CONFIG_FILE}",
            "--host",
            "0.0.0.0",
            "--port",
            str(GATEWAY_PORT),
            "--admin-port",
            str(GATEWAY_ADMIN_PORT),
            # Audit lines on stdout, the gateway's own logs on stderr: log pipelines
            # collect stdout as the audit stream; each policy's audit.enabled still applies.
            "--audit-log",
            "-",
        ],
        "ports": [
            {"name": "http", "containerPort": GATEWAY_PORT},
            {"name": "admin", "containerPort": GATEWAY_ADMIN_PORT},
        ],
        "readinessProbe": {**probe, "httpGet": {"path": "/readyz", "port": "http"}},
        "livenessProbe": {
            **probe,
            "httpGet": {"path": "/healthz", "port": "http"},
            "failureThreshold": 6,
        },
        "resources": {
            "requests": {
                "cpu": settings.gateway_cpu_request,
                "memory": settings.gateway_memory_request,
            },
            "limits": {"memory": settings.gateway_memory_limit},
        },
        "securityContext": RESTRICTED_CONTAINER,
        "volumeMounts": mounts,
    }


def _gateway_deployment(g: _GatewayMeta, *, pod: Manifest, replicas: int, shared: bool) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": g.meta(),
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "RollingUpdate"} if shared else {"type": "Recreate"},
            "selector": {"matchLabels": dict(g.labels)},
            "template": {"metadata": {"labels": g.labels}, "spec": pod},
        },
    }


def _gateway_services(g: _GatewayMeta) -> list[Manifest]:
    """The API Service callers use, and the admin Service (metrics, status) apart."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": g.meta(),
            "spec": {
                "selector": dict(g.labels),
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": g.meta(GATEWAY_ADMIN_NAME, **ADMIN_LABEL),
            "spec": {
                "selector": dict(g.labels),
                "ports": [{"name": "admin", "port": GATEWAY_ADMIN_PORT, "targetPort": "admin"}],
            },
        },
    ]


def _gateway_hpa(g: _GatewayMeta, *, replicas: int, settings: Settings) -> Manifest:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": g.meta(),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY_NAME},
            "minReplicas": replicas,
            "maxReplicas": max(replicas, settings.gateway_hpa_max),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
        },
    }


def _gateway_service_monitor(g: _GatewayMeta) -> Manifest:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": g.meta(),
        "spec": {
            "selector": {"matchLabels": {**g.labels, **ADMIN_LABEL}},
            "endpoints": [{"port": "admin", "path": "/metrics", "interval": "30s"}],
        },
    }
