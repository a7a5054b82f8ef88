"""Autoscaling on why requests escalate, end to end with real parts.

Real API server and operator process; the real KubeRay operator (RayCluster, head and
worker pods on the simulated nodes, Services, RayService status); the real model app
(SmolLM2 on local Ray Serve, submitted by KubeRay from the RayService the operator
rendered); the real gateway (from the rendered ConfigMap); a real simulated expert
process; a real Prometheus scraping the gateway. A load that saturates the pool makes
overflow escalations; the operator raises the pool's replicas; KubeRay adds a worker pod
on a CPU node and submits the Serve config with more replicas; overflow falls. When the
load stops the pool scales back down after its stabilisation window and KubeRay removes
the worker. A load whose escalations are all low_confidence never scales up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.testkit import KubectlRunner, free_port, wait_for_port

from e2e import dataplane
from e2e import kuberay as kuberay_mod
from e2e import operator_support as ops

pytestmark = [pytest.mark.cluster, pytest.mark.serving]

INTERVAL = 5
# Mean arrivals per second: about one replica's capacity (8 tokens of SmolLM2 on one
# thread), so one replica overflows often and two rarely.
RATE = 3.0
SCALE_DOWN_STABILIZATION = 20
# Answers measured after the new replica settled before the load stops (~10 s at RATE).
AFTER_N = 30


def _prometheus_binary() -> str:
    cache = Path(os.environ.get("KASCADE_CACHE", Path.home() / ".cache" / "kascade"))
    binary = cache / "bin" / "current" / "prometheus"
    if not binary.exists():
        raise RuntimeError(f"{binary} missing: run e2e/cluster/build")
    return str(binary)


def _manifests(*, sim_port: int, prom_port: int, threshold: float) -> str:
    return textwrap.dedent(
        f"""
        apiVersion: kascade.io/v1alpha1
        kind: LocalModelPool
        metadata: {{name: tiny}}
        spec:
          model: {{runtime: llama-cpp, source: "builtin://smollm2-135m-instruct",
                   contextLength: 512}}
          replicas: {{min: 1, max: 2}}
          resources: {{cpu: "1", memory: 1Gi}}
          capacity: {{maxConcurrentPerReplica: 1, maxQueueWaitMillis: 0}}
          costPerReplicaHour: 0.01
          autoscaling:
            enabled: true
            intervalSeconds: {INTERVAL}
            scaleUpStabilizationSeconds: 0
            scaleDownStabilizationSeconds: {SCALE_DOWN_STABILIZATION}
            targetUtilization: 0.9
            metricsSource: prometheus
            prometheusUrl: http://127.0.0.1:{prom_port}
        ---
        apiVersion: kascade.io/v1alpha1
        kind: CloudExpert
        metadata: {{name: sim}}
        spec:
          provider: openai-compatible
          endpoint: http://127.0.0.1:{sim_port}
          allowInsecureHttp: true
          model: sim-large
          pricing: {{inputPerMillionTokens: 50, outputPerMillionTokens: 100}}
          budget: {{limitUSD: 100, window: calendar-day}}
        ---
        apiVersion: kascade.io/v1alpha1
        kind: RoutingPolicy
        metadata: {{name: scaled}}
        spec:
          localPool: tiny
          experts: [sim]
          confidence: {{method: mean-token-prob, threshold: {threshold}}}
          overflow: escalate
          privacy: {{action: allow}}
        ---
        apiVersion: kascade.io/v1alpha1
        kind: Tenant
        metadata: {{name: load}}
        spec:
          keys: {{secretRef: {{name: load-keys}}}}
        """
    )


class Load:
    """Open-loop load: requests arrive at random (Poisson) times at a fixed mean rate,
    whether or not earlier ones finished, like independent users. Records (time, reason)."""

    def __init__(self, url: str, *, key: str, seed: int = 7) -> None:
        self.url = url
        self.headers = {"authorization": f"Bearer {key}"}
        self.results: list[tuple[float, str]] = []
        self.random = random.Random(seed)

    async def run(self, *, rate: float, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        async with aiohttp.ClientSession() as session:

            async def one(n: int) -> None:
                body = {
                    "model": "scaled",
                    "max_tokens": 8,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": f"Say the number {n}."}],
                }
                async with session.post(self.url, json=body, headers=self.headers) as reply:
                    await reply.read()
                    assert reply.status == 200, await reply.text()
                    self.results.append((time.time(), reply.headers["x-kascade-reason"]))

            tasks = []
            n = 0
            try:
                while time.monotonic() < deadline:
                    n += 1
                    tasks.append(asyncio.create_task(one(n)))
                    await asyncio.sleep(self.random.expovariate(rate))
            finally:
                await asyncio.gather(*tasks)

    async def sequential(self, *, seconds: float, pause: float) -> None:
        """One client, one request at a time with a pause between: it can never saturate
        the pool, and keeps utilisation well under target."""
        deadline = time.monotonic() + seconds
        async with aiohttp.ClientSession() as session:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                body = {
                    "model": "scaled",
                    "max_tokens": 8,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": f"Name the colour {n}."}],
                }
                async with session.post(self.url, json=body, headers=self.headers) as reply:
                    await reply.read()
                    assert reply.status == 200, await reply.text()
                    self.results.append((time.time(), reply.headers["x-kascade-reason"]))
                await asyncio.sleep(pause)

    def answered_since(self, start: float) -> list[str]:
        """The reasons of the answers received at or after ``start``."""
        return [r for t, r in self.results if t >= start]

    def overflow_fraction(self, start: float, end: float) -> float:
        window = [r for t, r in self.results if start <= t < end]
        return sum(r == "overflow" for r in window) / max(1, len(window))


def _epoch(timestamp: str) -> float:
    """Seconds since the epoch of a status timestamp such as 2026-12-03T15:04:05Z."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _settled(kuberay: dataplane.LocalServe) -> float:
    """When the newest Serve deployment counts as settled (its replica warm)."""
    return kuberay.deployments[-1][0] + 5


def _gateway_serves_synced(stack: dict[str, Any]) -> bool:
    """True once the gateway runs the policy generation of the config file it was given."""
    gateway = stack["gateway"]
    wanted = json.loads(gateway.config_path.read_text())["policies"]["scaled"].get("generation", 1)
    status_url = f"http://127.0.0.1:{gateway.admin_port}/v1/kascade/status"
    with urllib.request.urlopen(status_url, timeout=5) as reply:
        running = json.load(reply)["policies"]["scaled"].get("generation", 1)
    return bool(running == wanted)


def _pool(kubectl: KubectlRunner, namespace: str) -> dict[str, Any]:
    return json.loads(kubectl("get", "lmp", "tiny", "-n", namespace, "-o", "json").stdout)


def _workers(kubectl: KubectlRunner, namespace: str) -> list[dict[str, Any]]:
    """The pool's Ray worker pods KubeRay created, Running and not being deleted."""
    pods = json.loads(
        kubectl(
            "get", "pods", "-n", namespace, "-l", "ray.io/node-type=worker", "-o", "json"
        ).stdout
    )["items"]
    return [
        p
        for p in pods
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


def _on_cpu_nodes(kubectl: KubectlRunner, pods: list[dict[str, Any]]) -> bool:
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    hardware = {
        n["metadata"]["name"]: n["metadata"]["labels"].get("kascade.io/hardware") for n in nodes
    }
    return all(hardware.get(p["spec"].get("nodeName")) == "cpu" for p in pods)


@pytest.fixture
def stack(
    kubeconfig: str,
    kubectl: KubectlRunner,
    namespace: str,
    kuberay: kuberay_mod.KubeRayOperator,
) -> Iterator[dict[str, Any]]:
    import ray
    from ray import serve

    kubectl("apply", "--server-side", "-f", str(ops.REPO / "crds"))
    sim_port, prom_port, gw_port, serve_port = free_port(), free_port(), free_port(), free_port()
    admin_port = free_port()
    key = f"ksk-e2e-{secrets.token_hex(20)}"
    workdir = Path(tempfile.mkdtemp(prefix="kascade-e2e-autoscale-"))
    record = workdir / "sim.jsonl"
    procs: list[subprocess.Popen[bytes]] = []
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kascade.cli",
            "sim-expert",
            "--port",
            str(sim_port),
            "--record",
            str(record),
        ]
    )
    procs.append(sim)
    (workdir / "prometheus.yml").write_text(
        textwrap.dedent(
            f"""
            global: {{scrape_interval: 1s, evaluation_interval: 1s}}
            scrape_configs:
              - job_name: kascade-gateway
                static_configs: [{{targets: ["127.0.0.1:{admin_port}"]}}]
            """
        )
    )
    prometheus = subprocess.Popen(
        [
            _prometheus_binary(),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(prometheus)
    # Off-cluster, the operator reaches the gateway (for spend) at its local address.
    operator = ops.OperatorProcess(
        kubeconfig,
        resync_seconds=5,
        env={"KASCADE_GATEWAY_URL_TEMPLATE": f"http://127.0.0.1:{admin_port}"},
    )
    operator.start()
    ray.init(
        num_cpus=4, include_dashboard=False, object_store_memory=200_000_000, log_to_driver=False
    )
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    local = kuberay.heads.serve(namespace)
    gateway = dataplane.GatewayFromConfigMap(
        kubectl,
        namespace=namespace,
        port=gw_port,
        admin_port=admin_port,
        serve_base=f"http://127.0.0.1:{serve_port}",
    )
    try:
        wait_for_port(sim_port)
        wait_for_port(prom_port)
        kubectl("create", "secret", "generic", "load-keys", "-n", namespace,
                f"--from-literal=k={key}")  # fmt: skip
        kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=_manifests(sim_port=sim_port, prom_port=prom_port, threshold=0.0),
        )
        ops.wait_for(
            "the rendered RayService",
            lambda: (
                kubectl("get", "rayservice", "tiny", "-n", namespace, check=False).returncode == 0
            ),
        )
        ops.wait_for(
            "the gateway ConfigMap with the tenant",
            lambda: (
                gateway.sync()
                and "load" in json.loads(gateway.config_path.read_text()).get("tenants", {})
            ),
        )
        # KubeRay creates the RayCluster, its pods become Running on the simulated nodes,
        # and KubeRay submits the Serve config to the head (here: the local Serve).
        ops.wait_for("KubeRay's first Serve submission", lambda: local.running(), timeout=300)
        ops.wait_for("one worker pod", lambda: len(_workers(kubectl, namespace)) == 1)
        gateway.start()
        yield {
            "url": f"http://127.0.0.1:{gw_port}/v1/chat/completions",
            "key": key,
            "local": local,
            "gateway": gateway,
            "operator": operator,
            "ports": (sim_port, prom_port),
            "record": record,
        }
    finally:
        local.stop()
        kuberay.heads.serves.pop(namespace, None)
        gateway.stop()
        operator.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
        serve.shutdown()
        ray.shutdown()
        if local.error is not None:
            print(f"The local Serve failed: {local.error!r}")
        print(f"---- operator log ----\n{operator.log()[-15000:]}")


def test_overflow_scales_up_then_down_and_low_confidence_never_scales(
    stack: dict[str, Any], kubectl: KubectlRunner, namespace: str
) -> None:
    load = Load(stack["url"], key=stack["key"])
    kuberay: dataplane.LocalServe = stack["local"]
    assert kuberay.replicas == 1
    started = time.time()

    async def saturate_until_scaled() -> None:
        task = asyncio.create_task(load.run(rate=RATE, seconds=150))
        while not task.done():
            if kuberay.replicas == 2 and len(load.answered_since(_settled(kuberay))) >= AFTER_N:
                break  # enough answers measured after the new replica settled
            await asyncio.sleep(0.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(saturate_until_scaled())
    pool = _pool(kubectl, namespace)
    decision = pool["status"]["lastScaleDecision"]
    assert (decision["from"], decision["to"]) == (1, 2), decision
    assert decision["reason"].startswith(("OverflowSpend", "Utilization")), decision
    assert pool["status"]["replicas"]["desired"] == 2
    assert kuberay.replicas == 2
    # KubeRay added the second worker pod, on a node of the pool's hardware (CPU).
    workers = ops.wait_for(
        "two worker pods",
        lambda: _workers(kubectl, namespace) if len(_workers(kubectl, namespace)) == 2 else None,
    )
    assert _on_cpu_nodes(kubectl, workers), [w["spec"].get("nodeName") for w in workers]
    first_overflow = min(t for t, r in load.results if r == "overflow")
    decided = _epoch(decision["time"])
    scaled_at = kuberay.deployments[-1][0]
    before = load.overflow_fraction(started, scaled_at)
    after = load.overflow_fraction(_settled(kuberay), time.time())
    reaction = decided - first_overflow
    print(
        f"AUTOSCALE reaction_s={reaction:.1f} overflow_before={before:.2f} "
        f"overflow_after={after:.2f} requests={len(load.results)}"
    )
    # Target: a decision within two intervals of sustained overflow (Prometheus needs a
    # few scrapes first, hence the extra seconds).
    assert reaction <= 2 * INTERVAL + 10, reaction
    assert before > 0.2, before
    assert after <= before * 0.7, (before, after)

    # Load stops: back to one replica after the scale-down stabilisation window.
    ops.wait_for(
        "scale-down to 1",
        lambda: _pool(kubectl, namespace)["status"]["replicas"]["desired"] == 1,
        timeout=SCALE_DOWN_STABILIZATION + 6 * INTERVAL + 30,
        interval=1,
    )
    # The window was waited, by the operator's own records (no test clock): the low case
    # held for the whole window, and no sooner than a window after the scale-up.
    down = _pool(kubectl, namespace)["status"]["lastScaleDecision"]
    assert (down["from"], down["to"]) == (2, 1), down
    assert down["reason"].startswith("UtilizationBelowTarget"), down
    held = re.search(r" for (\d+)s", down["reason"])
    assert held is not None, down
    assert int(held.group(1)) >= SCALE_DOWN_STABILIZATION, down
    assert _epoch(down["time"]) - decided >= SCALE_DOWN_STABILIZATION, (decision, down)
    ops.wait_for("one Serve replica", lambda: kuberay.replicas == 1, timeout=30)
    ops.wait_for(
        "KubeRay removed the second worker", lambda: len(_workers(kubectl, namespace)) == 1
    )

    # Every answer below threshold 1.0 escalates as low_confidence; one client never
    # saturates the pool. However much that costs, the pool must not scale up.
    sim_port, prom_port = stack["ports"]
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=_manifests(sim_port=sim_port, prom_port=prom_port, threshold=1.0),
    )
    ops.wait_for(
        "gateway config with threshold 1.0",
        lambda: (
            stack["gateway"].sync()
            and (
                '"threshold": 1.0' in stack["gateway"].config_path.read_text()
                or '"threshold":1.0' in stack["gateway"].config_path.read_text()
            )
        ),
    )
    ops.wait_for("the gateway reloaded its config", lambda: _gateway_serves_synced(stack))
    low = Load(stack["url"], key=stack["key"])
    before_low = _pool(kubectl, namespace)["status"]["lastScaleDecision"]
    asyncio.run(low.sequential(seconds=6 * INTERVAL, pause=1.0))
    reasons = {r for _, r in low.results}
    assert reasons == {"low_confidence"}, reasons
    pool = _pool(kubectl, namespace)
    assert len(low.results) >= 10

    # The expert's spend is mirrored from the gateway's ledger into its status.
    def spent() -> float:
        expert = json.loads(kubectl("get", "cx", "sim", "-n", namespace, "-o", "json").stdout)
        return float(((expert.get("status") or {}).get("spend") or {}).get("spentUSD", 0))

    assert ops.wait_for("spend mirrored", lambda: spent() > 0, timeout=30) is True
    assert pool["status"]["lastScaleDecision"] == before_low, pool["status"]["lastScaleDecision"]
    assert pool["status"]["replicas"]["desired"] == 1
    assert kuberay.replicas == 1
