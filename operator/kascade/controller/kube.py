"""A small async Kubernetes client for the handful of kinds the operator touches.

Built on kubernetes_asyncio's ApiClient (authentication, kubeconfig, in-cluster config)
but speaking plain JSON dicts, because the operator's builders produce plain manifests
and server-side apply takes them as they are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import prometheus_client
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

FIELD_MANAGER = "kascade-operator"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    """Where a kind lives in the REST API."""

    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, *, namespace: str | None, name: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        ns = f"/namespaces/{namespace}" if self.namespaced and namespace else ""
        tail = f"/{name}" if name else ""
        return f"{prefix}{ns}/{self.plural}{tail}"


# Every kind the operator reads or writes; anything else is a programming error.
RESOURCES: dict[str, ResourceType] = {
    "LocalModelPool": ResourceType("kascade.io/v1alpha1", "localmodelpools"),
    "CloudExpert": ResourceType("kascade.io/v1alpha1", "cloudexperts"),
    "RoutingPolicy": ResourceType("kascade.io/v1alpha1", "routingpolicies"),
    "Tenant": ResourceType("kascade.io/v1alpha1", "tenants"),
    "NetworkPolicy": ResourceType("networking.k8s.io/v1", "networkpolicies"),
    "PersistentVolumeClaim": ResourceType("v1", "persistentvolumeclaims"),
    "RayService": ResourceType("ray.io/v1", "rayservices"),
    "RayCluster": ResourceType("ray.io/v1", "rayclusters"),
    "Deployment": ResourceType("apps/v1", "deployments"),
    "Service": ResourceType("v1", "services"),
    "ConfigMap": ResourceType("v1", "configmaps"),
    "Secret": ResourceType("v1", "secrets"),
    "Event": ResourceType("v1", "events"),
    "HorizontalPodAutoscaler": ResourceType("autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ResourceType("policy/v1", "poddisruptionbudgets"),
    "ServiceMonitor": ResourceType("monitoring.coreos.com/v1", "servicemonitors"),
    "EndpointSlice": ResourceType("discovery.k8s.io/v1", "endpointslices"),
    "Lease": ResourceType("coordination.k8s.io/v1", "leases"),
    "CustomResourceDefinition": ResourceType(
        "apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False
    ),
}


API_REQUESTS = prometheus_client.Counter(
    "kascade_operator_api_requests_total",
    "Requests the operator's reconciles made to the API server (kopf's watches excluded).",
    ["verb"],
)


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when unreachable)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class Kube:
    """JSON-in, JSON-out access to the API server, counting the requests it makes."""

    # How long a CRD's presence is remembered: reconciles of many objects ask the same
    # question, and KubeRay being installed is noticed within this time.
    CRD_CACHE_SECONDS = 5.0

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self.requests = 0
        self._crds: dict[str, tuple[float, bool]] = {}

    @classmethod
    async def connect(cls, *, kubeconfig: str | None = None) -> Kube:
        """Connects from a kubeconfig file, or in-cluster when running in a pod."""
        if kubeconfig is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                await config.load_kube_config()
        else:
            await config.load_kube_config(config_file=kubeconfig)
        return cls(client.ApiClient())

    async def close(self) -> None:
        await self._api.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Manifest:
        self.requests += 1
        API_REQUESTS.labels(method).inc()
        try:
            response = await self._api.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=30,
            )
        except ApiException as exc:
            raise KubeError(_api_message(exc), status=int(exc.status or 0)) from None
        raw = await response.read()
        # Without preloading, the client does not raise on errors: check the status here.
        # Error bodies are usually a JSON Status, but "404 page not found" is plain text.
        if response.status >= 400:
            raise KubeError(
                f"{response.status} {response.reason}: {_status_message(raw)}",
                status=response.status,
            )
        return json.loads(raw) if raw else {}

    async def get(self, kind: str, *, namespace: str | None, name: str) -> Manifest | None:
        """Returns the object, or None when it does not exist."""
        try:
            return await self._call("GET", RESOURCES[kind].path(namespace=namespace, name=name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, kind: str, *, namespace: str | None, label_selector: str | None = None
    ) -> list[Manifest]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result = await self._call("GET", RESOURCES[kind].path(namespace=namespace), query=query)
        items: list[Manifest] = result.get("items", [])
        return items

    async def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply with the operator's field manager, taking ownership on conflict.

        ``fieldValidation=Strict``: a field the server does not know (a typo, or one its
        CRD version prunes) fails the apply with the field named, instead of being
        dropped silently and re-sent on every resync.
        """
        meta = manifest["metadata"]
        path = RESOURCES[manifest["kind"]].path(namespace=meta.get("namespace"), name=meta["name"])
        return await self._call(
            "PATCH",
            path,
            body=manifest,
            query=[
                ("fieldManager", FIELD_MANAGER),
                ("force", "true"),
                ("fieldValidation", "Strict"),
            ],
            content_type="application/apply-patch+yaml",
        )

    async def patch_status(
        self,
        kind: str,
        *,
        namespace: str,
        name: str,
        status: Manifest,
        resource_version: str | None = None,
    ) -> Manifest:
        """Merge-patches the status subresource (never the spec). With
        ``resource_version`` the write is conditional: 409 if the object changed since."""
        path = RESOURCES[kind].path(namespace=namespace, name=name) + "/status"
        body: Manifest = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self._call(
            "PATCH", path, body=body, content_type="application/merge-patch+json"
        )

    async def patch_json(
        self, kind: str, *, namespace: str, name: str, operations: Sequence[Manifest]
    ) -> Manifest:
        """A JSON patch (RFC 6902): ``test`` operations make it conditional."""
        path = RESOURCES[kind].path(namespace=namespace, name=name)
        return await self._call(
            "PATCH", path, body=list(operations), content_type="application/json-patch+json"
        )

    async def delete(self, kind: str, *, namespace: str | None, name: str) -> bool:
        """Deletes the object; returns False when it was already gone."""
        try:
            await self._call("DELETE", RESOURCES[kind].path(namespace=namespace, name=name))
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def has_crd(self, name: str) -> bool:
        """Whether a CustomResourceDefinition (e.g. rayservices.ray.io) is installed."""
        now = time.monotonic()
        cached = self._crds.get(name)
        if cached is not None and now - cached[0] < self.CRD_CACHE_SECONDS:
            return cached[1]
        found = await self.get("CustomResourceDefinition", namespace=None, name=name) is not None
        self._crds[name] = (now, found)
        return found

    async def replace(self, manifest: Manifest) -> Manifest:
        """Replaces the object (PUT). With ``metadata.resourceVersion`` set the write is
        conditional: 409 if the object changed since that version."""
        meta = manifest["metadata"]
        path = RESOURCES[manifest["kind"]].path(namespace=meta.get("namespace"), name=meta["name"])
        return await self._call("PUT", path, body=manifest)

    async def create(self, manifest: Manifest, *, dry_run: bool = False) -> Manifest:
        """Creates the object; with ``dry_run`` the API server validates it (unknown
        fields included) and stores nothing."""
        meta = manifest["metadata"]
        path = RESOURCES[manifest["kind"]].path(namespace=meta.get("namespace"))
        query = [("dryRun", "All"), ("fieldValidation", "Strict")] if dry_run else None
        return await self._call("POST", path, body=manifest, query=query)


def _status_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:500] or "no message"
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or "no message")


def _api_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return f"{exc.status} {exc.reason}: {message or 'no message'}"
