"""Scrape addresses from the EndpointSlices a real API server and controller manager make.

The pods run on kwok's simulated nodes (no process listens on their IPs), so this checks
the EndpointSlice shape and the ready filtering, not the HTTP scrape itself (covered by
test_autoscale_sources.py against real servers on 127.0.0.1).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest

from kascade.controller import autoscale

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]

MANIFEST = textwrap.dedent(
    """
    apiVersion: v1
    kind: Service
    metadata: {name: kascade-gateway}
    spec:
      selector: {app: gateway}
      ports:
        - {name: http, port: 80, targetPort: http}
        - {name: admin, port: 9000, targetPort: 9000}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: gateway}
    spec:
      replicas: 3
      selector: {matchLabels: {app: gateway}}
      template:
        metadata: {labels: {app: gateway}}
        spec:
          containers:
            - name: gateway
              image: registry.invalid/gateway:1
              ports: [{name: http, containerPort: 8080}]
              resources: {requests: {cpu: 100m, memory: 64Mi}}
    """
)


def slices(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    listed = kubectl(
        "get",
        "endpointslices",
        "-n",
        namespace,
        "-l",
        "kubernetes.io/service-name=kascade-gateway",
        "-o",
        "json",
    )
    items: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
    return items


def test_ready_gateway_pods_become_scrape_addresses(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=MANIFEST)
    kubectl(
        "wait", "-n", namespace, "--for=condition=Available", "deployment/gateway", "--timeout=90s"
    )
    pods = json.loads(
        kubectl("get", "pods", "-n", namespace, "-l", "app=gateway", "-o", "json").stdout
    )["items"]
    pod_ips = sorted(p["status"]["podIP"] for p in pods)
    assert len(pod_ips) == 3

    deadline = time.monotonic() + 60
    addresses: list[str] = []
    while time.monotonic() < deadline:
        addresses = autoscale.scrape_addresses(endpoint_slices=slices(kubectl, namespace))
        if len(addresses) == 3:
            break
        time.sleep(1)

    # The Service port is 80, but pods are scraped directly on the target port, 8080.
    assert addresses == sorted(f"{ip}:8080" for ip in pod_ips)
    assert (
        autoscale.scrape_addresses(endpoint_slices=slices(kubectl, namespace), port_name="missing")
        == []
    )
