"""Operator at scale: 300 RoutingPolicies + 300 CloudExperts + 100 LocalModelPools applied
at once on the local control plane (e2e/cluster/up), with the real operator process.

Reports time until every object is Ready (pools: RayService rendered and Degraded=False,
since no Ray runs here to serve them; experts: Ready; policies: Ready, i.e. their gateway
is available). With ``--kuberay`` the real KubeRay operator runs too, creating a
RayCluster with head and worker pods for every pool while the figures are taken. Also
reports the API requests the operator's reconciles made, the operator's peak RSS,
and writes per minute once idle (objects whose resourceVersion moved in a quiet minute).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from e2e import dataplane  # noqa: E402  (needs the repo root on sys.path)
from e2e import kuberay as kuberay_mod  # noqa: E402  (same)
from e2e import operator_support as ops  # noqa: E402  (same)
from tests.testkit import free_port  # noqa: E402  (same)


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args[:3])}: {proc.stderr[-2000:]}")
    return proc.stdout


def manifests(namespace: str, *, pools: int, experts: int, policies: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "llm-key", "namespace": namespace},
            "stringData": {"api-key": "bench-not-a-secret"},
        },
    ]
    for i in range(pools):
        docs.append(
            {
                "apiVersion": "kascade.io/v1alpha1",
                "kind": "LocalModelPool",
                "metadata": {"name": f"pool-{i}", "namespace": namespace},
                "spec": {
                    "model": {"runtime": "llama-cpp", "source": "builtin://smollm2-135m-instruct"}
                },
            }
        )
    for i in range(experts):
        docs.append(
            {
                "apiVersion": "kascade.io/v1alpha1",
                "kind": "CloudExpert",
                "metadata": {"name": f"expert-{i}", "namespace": namespace},
                "spec": {
                    "provider": "openai",
                    "model": "gpt-4o-mini",
                    "credentials": {"secretRef": {"name": "llm-key", "key": "api-key"}},
                    "pricing": {"inputPerMillionTokens": 0.15, "outputPerMillionTokens": 0.6},
                    "budget": {"limitUSD": 10},
                },
            }
        )
    for i in range(policies):
        docs.append(
            {
                "apiVersion": "kascade.io/v1alpha1",
                "kind": "RoutingPolicy",
                "metadata": {"name": f"policy-{i}", "namespace": namespace},
                "spec": {
                    "localPool": f"pool-{i % pools}",
                    "experts": [f"expert-{i % experts}", f"expert-{(i + 1) % experts}"],
                },
            }
        )
    return docs


def condition(obj: dict[str, Any], type_: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("observedGeneration") == obj["metadata"]["generation"]:
            return str(c.get("status"))
    return None


def ready(obj: dict[str, Any]) -> bool:
    if obj["kind"] == "LocalModelPool":
        return condition(obj, "Degraded") == "False"
    return condition(obj, "Ready") == "True"


def list_all(kubeconfig: str, namespaces: list[str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for kind in ("localmodelpools", "cloudexperts", "routingpolicies"):
        out = json.loads(kubectl(kubeconfig, "get", kind, "-A", "-o", "json"))
        items += [o for o in out["items"] if o["metadata"]["namespace"] in namespaces]
    return items


def versions(kubeconfig: str, namespaces: list[str]) -> dict[str, str]:
    found = {}
    kinds = (
        "localmodelpools,cloudexperts,routingpolicies,rayservices,deployments,configmaps,services"
    )
    out = json.loads(kubectl(kubeconfig, "get", kinds, "-A", "-o", "json"))
    for o in out["items"]:
        meta = o["metadata"]
        if meta["namespace"] in namespaces:
            found[f"{o['kind']}/{meta['namespace']}/{meta['name']}"] = meta["resourceVersion"]
    return found


def operator_requests(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("kascade_operator_api_requests_total{")
    )


def extra_nodes(count: int) -> list[dict[str, Any]]:
    """Simulated CPU nodes (kwok) like e2e/cluster/nodes.yaml's, so that with KubeRay the
    head and worker pods of 100 pools leave room for the gateways: the two test nodes
    alone are full after about 30 pools and the rest of the gateways stay Pending."""
    nodes = []
    for i in range(count):
        name = f"kwok-bench-cpu-{i}"
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "kascade.io/hardware": "cpu",
                        "type": "kwok",
                    },
                },
                "spec": {"taints": []},
                "status": {
                    "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110"},
                    "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110"},
                },
            }
        )
    return nodes


def _runner(kubeconfig: str) -> dataplane.KubectlRunner:
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", kubeconfig, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )

    return run


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--experts", type=int, default=300)
    parser.add_argument("--policies", type=int, default=300)
    parser.add_argument("--idle-seconds", type=int, default=60)
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument(
        "--extra-nodes",
        type=int,
        default=None,
        help="simulated CPU nodes added for the run (default: 16 with --kuberay, else 0)",
    )
    parser.add_argument(
        "--kuberay",
        action="store_true",
        help="also run the real KubeRay operator (RayClusters and their pods for every pool)",
    )
    args = parser.parse_args()
    up = subprocess.run(
        [str(REPO / "e2e" / "cluster" / "up")], capture_output=True, text=True, check=True
    )
    kubeconfig = up.stdout.strip().splitlines()[-1]
    cache = Path(os.environ.get("KASCADE_CACHE", Path.home() / ".cache" / "kascade"))
    os.environ["PATH"] = f"{cache / 'bin' / 'current'}{os.pathsep}{os.environ['PATH']}"
    kubectl(kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds"))
    crds = subprocess.run(
        [str(REPO / "e2e" / "cluster" / "kuberay-crds")], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    kubectl(kubeconfig, "apply", "--server-side", "-f", crds)
    nodes = extra_nodes(args.extra_nodes if args.extra_nodes is not None else 16 * args.kuberay)
    if nodes:
        kubectl(kubeconfig, "apply", "--server-side", "-f", "-",
                stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))  # fmt: skip
    run = f"bench-{int(time.time()) % 100000}"
    namespaces = [f"{run}-{i}" for i in range(args.namespaces)]
    n = args.namespaces
    docs = []
    for ns in namespaces:
        docs += manifests(
            ns, pools=args.pools // n, experts=args.experts // n, policies=args.policies // n
        )
    objects = sum(1 for d in docs if d["apiVersion"].startswith("kascade.io"))
    metrics_port = free_port()
    os.environ["KASCADE_METRICS_PORT"] = str(metrics_port)
    operator = ops.OperatorProcess(kubeconfig, resync_seconds=60)
    operator.start()
    assert operator.proc is not None
    kuberay: kuberay_mod.KubeRayOperator | None = None
    if args.kuberay:
        kuberay = kuberay_mod.KubeRayOperator(kubeconfig, dataplane.RayHeads(_runner(kubeconfig)))
        kuberay.start()
    try:
        time.sleep(3)
        path = Path(tempfile.mkdtemp()) / "objects.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        start = time.monotonic()
        kubectl(kubeconfig, "apply", "--server-side", "-f", str(path))
        applied = time.monotonic() - start
        all_ready_s = None
        while time.monotonic() - start < args.timeout:
            items = list_all(kubeconfig, namespaces)
            done = sum(ready(o) for o in items)
            if len(items) == objects and done == objects:
                all_ready_s = time.monotonic() - start
                break
            print(f"  {time.monotonic() - start:5.1f}s: {done}/{objects} Ready", flush=True)
            time.sleep(2)
        requests_to_ready = operator_requests(metrics_port)
        time.sleep(5)  # let the last status writes land before measuring quiet time
        before = versions(kubeconfig, namespaces)
        time.sleep(args.idle_seconds)
        after = versions(kubeconfig, namespaces)
        moved = [k for k, v in after.items() if before.get(k) != v]
        idle_writes = len(moved) * 60 / args.idle_seconds
        result = {
            "objects": objects,
            "kuberay": args.kuberay,
            "all_ready_s": None if all_ready_s is None else round(all_ready_s, 1),
            "apply_s": round(applied, 1),
            "api_requests": int(requests_to_ready),
            "peak_rss_mb": round(peak_rss_mb(operator.proc.pid), 1),
            "idle_writes_per_min": idle_writes,
        }
        if moved:
            print(f"objects written while idle: {moved[:10]}")
    finally:
        operator.stop()
        if kuberay is not None:
            kuberay.stop()
            kuberay.heads.close()
        for ns in namespaces:
            kubectl(kubeconfig, "delete", "namespace", ns, "--wait=false")
        for node in nodes:
            kubectl(kubeconfig, "delete", "node", node["metadata"]["name"], "--wait=false")
    print(json.dumps({**result, "extra_nodes": len(nodes)}))
    return 0 if result["all_ready_s"] is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
