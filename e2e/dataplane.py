"""The data plane of an e2e namespace, run on this machine from what the operator rendered.

Pods are simulated (kwok), so nothing runs the images. This stands in for the parts a
real cluster would run: ``KubeRayStandIn`` does what KubeRay does with a RayService
(deploys its ``serveConfigV2`` on Ray Serve — here a local Ray instance — and reports
ready replicas in the RayService status), and ``GatewayFromConfigMap`` runs the real
gateway process with the ConfigMap's config, the in-cluster Service DNS names of pools
replaced by the local Serve address (the one thing that differs off-cluster).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

KubectlRunner = Callable[..., "subprocess.CompletedProcess[str]"]


class KubeRayStandIn:
    """Deploys the RayService's Serve application locally whenever its config changes."""

    def __init__(self, kubectl: KubectlRunner, *, namespace: str, name: str) -> None:
        self.kubectl = kubectl
        self.namespace = namespace
        self.name = name
        self.deployed: str | None = None
        self.replicas = 0
        self.deployments: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.sync()
                self._stop.wait(1.0)
        except BaseException as exc:
            self.error = exc
            raise

    def sync(self) -> None:
        from ray import serve

        from kascade.serving import app as serving_app

        got = self.kubectl(
            "get", "rayservice", self.name, "-n", self.namespace, "-o", "json", check=False
        )
        if got.returncode != 0:
            return
        rayservice = json.loads(got.stdout)
        serve_config = rayservice["spec"]["serveConfigV2"]
        if serve_config != self.deployed:
            application = yaml.safe_load(serve_config)["applications"][0]
            args = application["args"]
            serve.run(
                serving_app.build_app(args),
                name=application["name"],
                route_prefix=f"/{application['name']}",
            )
            self.deployed = serve_config
            self.replicas = int(args["replicas"]["max"])
            self.deployments.append((time.time(), self.replicas))
            self._report_ready()

    def _report_ready(self) -> None:
        status = {
            "status": {
                "serviceStatus": "Running",
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "RunningServeApplications",
                        "message": "Serve applications are running (local stand-in)",
                        "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                ],
                "activeServiceStatus": {"rayClusterStatus": {"readyWorkerReplicas": self.replicas}},
            }
        }
        self.kubectl(
            "patch",
            "rayservice",
            self.name,
            "-n",
            self.namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(status),
        )


class GatewayFromConfigMap:
    """The real gateway process, fed the operator's ConfigMap (re-synced when it changes).

    It also stands in for the kubelet's Secret volumes: each Tenant's keys Secret is read
    from the API server and written the way the kubelet writes a mounted Secret (a
    versioned directory behind a swapped ``..data`` link), every second while running.
    """

    def __init__(
        self,
        kubectl: KubectlRunner,
        *,
        namespace: str,
        port: int,
        serve_base: str,
        admin_port: int | None = None,
        pools_at: str | None = None,
    ) -> None:
        self.kubectl = kubectl
        self.namespace = namespace
        self.port = port
        self.admin_port = admin_port
        self.serve_base = serve_base
        self.pools_at = pools_at
        self.dir = Path(tempfile.mkdtemp(prefix="kascade-e2e-gw-"))
        self.config_path = self.dir / "config.json"
        self.log_path = self.dir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._synced: str | None = None
        self._tenant_secrets: dict[str, str] = {}
        self._stop = threading.Event()
        self._versions = 0

    def sync(self) -> bool:
        got = self.kubectl(
            "get", "configmap", "kascade-gateway", "-n", self.namespace, "-o", "json", check=False
        )
        if got.returncode != 0:
            return False
        text = json.loads(got.stdout)["data"]["config.json"]
        if text == self._synced:
            return True
        config: dict[str, Any] = json.loads(text)
        for name, pool in config.get("pools", {}).items():
            pool["endpoint"] = self.pools_at or f"{self.serve_base}/{name}"
        config.setdefault("ledger", {})["checkpointPath"] = str(self.dir / "ledger.json")
        for name, tenant in config.get("tenants", {}).items():
            # The operator mounts the Secret named by the Tenant at keys.dir.
            tenant["keys"]["dir"] = str(self.dir / "tenants" / name)
        self._tenant_secrets = self._secret_names()
        self.sync_keys()
        tmp = self.dir / "config.json.tmp"
        tmp.write_text(json.dumps(config))
        os.replace(tmp, self.config_path)
        self._synced = text
        return True

    def _secret_names(self) -> dict[str, str]:
        got = self.kubectl("get", "tenants", "-n", self.namespace, "-o", "json")
        return {
            t["metadata"]["name"]: t["spec"]["keys"]["secretRef"]["name"]
            for t in json.loads(got.stdout)["items"]
        }

    def sync_keys(self) -> None:
        """Writes each Tenant's Secret as the kubelet would (missing Secret: no files)."""
        for tenant, secret in self._tenant_secrets.items():
            got = self.kubectl(
                "get", "secret", secret, "-n", self.namespace, "-o", "json", check=False
            )
            data = json.loads(got.stdout).get("data") or {} if got.returncode == 0 else {}
            files = {k: base64.b64decode(v).decode() for k, v in data.items()}
            self._versions += 1
            write_secret_dir(self.dir / "tenants" / tenant, files, version=self._versions)

    def _keys_loop(self) -> None:
        while not self._stop.wait(1.0):
            self.sync_keys()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kascade.cli",
                "gateway",
                "--config",
                str(self.config_path),
                "--port",
                str(self.port),
                *(["--admin-port", str(self.admin_port)] if self.admin_port else []),
            ],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        if self._tenant_secrets:
            threading.Thread(target=self._keys_loop, daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("the gateway did not become ready")

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def write_secret_dir(path: Path, files: dict[str, str], *, version: int) -> None:
    """Writes ``files`` into ``path`` like the kubelet's atomic writer: a versioned
    directory, the ``..data`` link swapped by rename, one link per key into ``..data``."""
    path.mkdir(parents=True, exist_ok=True)
    target = path / f"..v{version}"
    target.mkdir()
    for name, value in files.items():
        (target / name).write_text(value)
    tmp = path / "..data_tmp"
    os.symlink(target.name, tmp)
    os.replace(tmp, path / "..data")
    for entry in os.listdir(path):
        if not entry.startswith(".") and entry not in files:
            os.unlink(path / entry)
    for name in files:
        if not (path / name).is_symlink():
            os.symlink(f"..data/{name}", path / name)
