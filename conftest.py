"""Shared fixtures: the real local control plane, a real redis-server, and helpers.

Layers: ``tests/unit`` needs nothing running; ``tests/integration`` and ``e2e/`` use
the fixtures below, which start real processes (never mocks).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.testkit import KubectlRunner, free_port, wait_for_port

REPO = Path(__file__).resolve().parent
CLUSTER_UP = REPO / "e2e" / "cluster" / "up"
CACHE_BIN = Path(os.environ.get("KASCADE_CACHE", Path.home() / ".cache" / "kascade")) / "bin"


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    """Brings the local control plane up (idempotent) and returns its kubeconfig path.

    Also puts the cached kubectl and helm first on PATH for the rest of the session.
    """
    proc = subprocess.run(
        [str(CLUSTER_UP)], capture_output=True, text=True, timeout=3600, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"e2e/cluster/up failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    path = proc.stdout.strip().splitlines()[-1]
    # A fresh discovery cache per session: kubectl's shared one (~/.kube/cache) can list
    # kinds of an earlier cluster on the same address (CRDs since removed), and then
    # `kubectl get <category>` fails with "the server doesn't have a resource type".
    os.environ["KUBECACHEDIR"] = tempfile.mkdtemp(prefix="kascade-kubectl-cache-")
    os.environ["PATH"] = f"{CACHE_BIN / 'current'}{os.pathsep}{os.environ['PATH']}"
    os.environ["KUBECONFIG"] = path
    return path


@pytest.fixture(scope="session")
def kubectl(kubeconfig: str) -> KubectlRunner:
    """Runs the cached kubectl against the local cluster: ``kubectl("get", "nodes")``."""
    binary = shutil.which("kubectl")
    cached = str(CACHE_BIN / "current")
    if binary is None or not binary.startswith(cached):
        raise RuntimeError(f"kubectl on PATH is {binary}, expected the cached one in {cached}")

    def run(
        *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [binary, "--kubeconfig", kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
            )
        return proc

    return run


@pytest.fixture
def namespace(kubectl: KubectlRunner, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    name = (
        f"t-{request.node.name.lower()[:40].strip('-_[]').replace('_', '-')}-{os.getpid() % 10000}"
    )
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name).strip("-")[:60]
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A real redis-server on a free loopback port; yields its URL ``redis://127.0.0.1:P/0``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: apt-get install redis-server")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="kascade-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            workdir,
            "--save",
            "",
            "--appendonly",
            "yes",
            "--daemonize",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session redis-server, flushed before each test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server
