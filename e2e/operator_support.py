"""Running the real operator process against the local control plane, as the chart's
ServiceAccount (so the test proves the chart's RBAC is sufficient)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
RELEASE_NS = "kascade-system"
RELEASE = "kascade"


def service_account_kubeconfig(
    kubectl: Callable[..., subprocess.CompletedProcess[str]], admin_kubeconfig: str, sa: str
) -> str:
    """A kubeconfig that authenticates as ``kascade-system/<sa>`` with a fresh token."""
    token = kubectl("create", "token", "-n", RELEASE_NS, sa, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster["cluster"]}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": sa}}],
        "current-context": "sa",
    }
    fd, path = tempfile.mkstemp(prefix="kascade-sa-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f)
    return path


class OperatorProcess:
    """``kascade operator`` as a child process with its log captured to a file."""

    def __init__(
        self, kubeconfig: str, *, resync_seconds: int = 10, env: dict[str, str] | None = None
    ) -> None:
        self.kubeconfig = kubeconfig
        self.extra_env = env or {}
        self.log_path = Path(tempfile.mkstemp(prefix="kascade-operator-", suffix=".log")[1])
        self.resync_seconds = resync_seconds
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "KASCADE_RESYNC_SECONDS": str(self.resync_seconds),
            "KASCADE_GATEWAY_IMAGE": "example.com/kascade/gateway:e2e",
            "KASCADE_SERVING_IMAGE": "example.com/kascade/serving:e2e",
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kascade.cli", "operator", "--all-namespaces"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def running_operator(
    kubeconfig: str, kubectl: Callable[..., Any], *, log_tail: int = 6000
) -> Iterator[OperatorProcess]:
    """The CRDs applied and the operator running for one test; its log tail printed after."""
    kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    proc = OperatorProcess(kubeconfig, resync_seconds=10)
    proc.start()
    yield proc
    proc.stop()
    print(f"---- operator log (tail) ----\n{proc.log()[-log_tail:]}")


def get_json(
    kubectl: Callable[..., subprocess.CompletedProcess[str]], *args: str
) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl("get", *args, "-o", "json").stdout)
    return result


def wait_for(
    what: str, check: Callable[[], Any], *, timeout: float = 60, interval: float = 0.5
) -> Any:
    """Polls ``check`` until it returns a truthy value; fails with ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def install_release(
    kubeconfig: str, kubectl: Callable[..., subprocess.CompletedProcess[str]]
) -> str:
    """The CRDs and the chart (RBAC, ServiceAccount; its pods are simulated by kwok), as
    ``helm upgrade --install``; returns a kubeconfig of the chart's ServiceAccount."""
    kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(
            f"crd/{plural}.kascade.io"
            for plural in ("localmodelpools", "cloudexperts", "routingpolicies", "tenants")
        ),
    )
    helm = subprocess.run(
        [
            "helm",
            "upgrade",
            "--install",
            RELEASE,
            str(REPO / "charts" / "kascade"),
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            RELEASE_NS,
            "--create-namespace",
            "--skip-crds",
            "--wait",
            "--timeout",
            "120s",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert helm.returncode == 0, helm.stderr
    return service_account_kubeconfig(kubectl, kubeconfig, RELEASE)
