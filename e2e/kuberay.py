"""The real KubeRay operator (``ray-operator``, built by ``e2e/cluster/build``) run out of
cluster against the local control plane, with ``RayHeads`` as its HTTP proxy."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from e2e import dataplane

REPO = Path(__file__).resolve().parent.parent
CRD_NAMES = ("rayclusters.ray.io", "rayjobs.ray.io", "rayservices.ray.io")


def binary() -> str:
    cache = Path(os.environ.get("KASCADE_CACHE", Path.home() / ".cache" / "kascade"))
    path = cache / "bin" / "current" / "ray-operator"
    if not path.exists():
        raise RuntimeError(f"{path} missing: run e2e/cluster/build")
    return str(path)


def crds_dir() -> Path:
    """KubeRay's CRDs from its Go module, at the pinned version."""
    out = subprocess.run(
        [str(REPO / "e2e" / "cluster" / "kuberay-crds")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def install_crds(kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """Applies KubeRay's CRDs and waits until each is Established (polling: ``kubectl
    wait`` fails outright while a new CRD has no conditions yet)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds_dir()))
    deadline = time.monotonic() + 60
    for name in CRD_NAMES:
        while True:
            got = kubectl(
                "get",
                "crd",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                check=False,
            )
            if got.stdout.strip() == "True":
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"CRD {name} not Established within 60s")
            time.sleep(0.5)


class KubeRayOperator:
    """``ray-operator`` as a child process; every HTTP call it makes to a Ray head goes to
    ``heads`` (the API server, on the loopback address, is never proxied)."""

    def __init__(self, kubeconfig: str, heads: dataplane.RayHeads) -> None:
        self.kubeconfig = kubeconfig
        self.heads = heads
        self.log_path = Path(tempfile.mkstemp(prefix="kuberay-operator-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "HTTP_PROXY": self.heads.proxy_url,
            "http_proxy": self.heads.proxy_url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    binary(),
                    "--metrics-addr=0",
                    "--health-probe-bind-address=0",
                    "--enable-leader-election=false",
                    "--log-stdout-encoder=console",
                ],
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
