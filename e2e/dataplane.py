"""The data plane of an e2e namespace, run on this machine from what the operator rendered.

Pods are simulated (kwok), so nothing runs the images. The real KubeRay operator
(``e2e/kuberay.py``) decides everything it decides in a real cluster: the RayCluster, its
head and worker pods and their nodes, the Services, the RayService's conditions. What a
simulated pod cannot do is run Ray: ``RayHeads`` answers the HTTP calls KubeRay makes to
a head pod (the dashboard's Serve API, the Serve proxy's health check) and runs the Serve
application KubeRay submits on a local Ray instance. KubeRay reaches it as its HTTP
proxy, so its calls to in-cluster names and pod IPs never leave this machine.
``GatewayFromConfigMap`` runs the real gateway process with the ConfigMap's config, the
in-cluster Service DNS names of pools replaced by the local Serve address.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.testkit import free_port, wait_for_port

KubectlRunner = Callable[..., "subprocess.CompletedProcess[str]"]

# KubeRay's dashboard client paths (ray-operator/controllers/ray/utils/dashboardclient).
SERVE_APPLICATIONS = "/api/serve/applications/"
PROXY_HEALTH = "/-/healthz"


class LocalServe:
    """One namespace's Serve applications on the local Ray instance, deployed from what
    KubeRay PUTs to the head's dashboard and reported from ``serve.status()``."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.deployments: list[tuple[float, int]] = []
        self.statuses: dict[str, dict[str, Any]] = {}
        self.error: BaseException | None = None
        self._config: dict[str, Any] | None = None
        self._submitted: dict[str, Any] | None = None
        self._names: set[str] = set()
        self._lock = threading.Lock()
        # Ray Serve is not thread-safe here: building a config (serve.run) and parsing
        # one (serve.status) both register and unregister a module for pickling by value
        # in a process-global set, and done at once one of them raises ("... is not
        # registered for pickle by value"). One Serve call at a time.
        self._serve_calls = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._guard(loop), daemon=True)
            for loop in (self._deploy_loop, self._status_loop)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def replicas(self) -> int:
        return self.deployments[-1][1] if self.deployments else 0

    def submit(self, config: dict[str, Any], *, cluster: str = "") -> None:
        """Deploys asynchronously (KubeRay's dashboard client gives up after 2 s); a
        resubmission of the config being deployed is a no-op, as in Serve. One local
        Serve hosts the namespace, whichever of its RayClusters ``cluster`` names."""
        with self._lock:
            if config == self._submitted:
                return
            self._submitted = self._config = config
        self._wake.set()

    def details(self, *, cluster: str = "") -> dict[str, Any]:
        """The body of ``GET /api/serve/applications/`` (Ray's ServeInstanceDetails)."""
        with self._lock:
            apps = {n: s for n, s in self.statuses.items() if n in self._names}
        return {"deploy_mode": "MULTI_APP", "applications": apps}

    def running(self, *, cluster: str = "") -> bool:
        apps = self.details()["applications"]
        return bool(apps) and all(a["status"] == "RUNNING" for a in apps.values())

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _guard(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except BaseException as exc:
                self.error = exc
                raise

        return run

    def _deploy_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                config, self._config = self._config, None
            if config is not None and not self._stop.is_set():
                self._deploy(config)

    def _status_loop(self) -> None:
        while not self._stop.wait(1.0):
            self._poll_status()

    def _deploy(self, config: dict[str, Any]) -> None:
        from ray import serve

        from kascade.serving import app as serving_app

        for application in config["applications"]:
            args = application["args"]
            name = application["name"]
            with self._lock:
                self._names.add(name)
            # One local Serve hosts every pool, so each is routed under its own name.
            with self._serve_calls:
                serve.run(serving_app.build_app(args), name=name, route_prefix=f"/{name}")
            self.deployments.append((time.time(), int(args["replicas"]["max"])))

    def _poll_status(self) -> None:
        from ray import serve

        if not self._names:
            return
        with self._serve_calls:
            status = serve.status()
        found: dict[str, dict[str, Any]] = {}
        for name, app in status.applications.items():
            found[name] = {
                "name": name,
                "status": str(app.status.value if hasattr(app.status, "value") else app.status),
                "message": app.message,
                "route_prefix": f"/{name}",
                "deployments": {
                    dname: {
                        "name": dname,
                        "status": str(d.status.value if hasattr(d.status, "value") else d.status),
                        "message": d.message,
                    }
                    for dname, d in app.deployments.items()
                },
            }
        with self._lock:
            self.statuses = found


class ReportedServe:
    """A namespace whose Serve applications run elsewhere (the test's simulated pool),
    reported per RayCluster, since during an upgrade KubeRay talks to two: the active
    one and the pending one it is preparing. Same interface as ``LocalServe``.

    What KubeRay submits to a cluster is reported with every deployment of it, RUNNING
    as soon as Serve could place its replicas: the pool's replicas run one per worker
    (the head takes none), so not before ``ready_workers(cluster)`` reaches the
    replica count (without ``ready_workers``: at once). ``hold()`` stands for a model
    that takes long to load: what is submitted while holding is reported DEPLOYING until
    ``release()``. What a cluster already runs is never affected.
    """

    def __init__(
        self, namespace: str, *, ready_workers: Callable[[str], int] | None = None
    ) -> None:
        self.namespace = namespace
        self.submitted: list[dict[str, Any]] = []
        self.by_cluster: dict[str, dict[str, Any]] = {}
        self.error: BaseException | None = None
        self._ready_workers = ready_workers
        self._holding = False
        self._loading: set[str] = set()
        self._lock = threading.Lock()

    def submit(self, config: dict[str, Any], *, cluster: str = "") -> None:
        with self._lock:
            self.submitted.append(config)
            if self.by_cluster.get(cluster) != config and self._holding:
                self._loading.add(cluster)
            self.by_cluster[cluster] = config

    def hold(self) -> None:
        with self._lock:
            self._holding = True

    def release(self) -> None:
        with self._lock:
            self._holding = False
            self._loading.clear()

    def config_of(self, cluster: str) -> dict[str, Any] | None:
        with self._lock:
            return self.by_cluster.get(cluster)

    def details(self, *, cluster: str = "") -> dict[str, Any]:
        with self._lock:
            config = self.by_cluster.get(cluster) or {"applications": []}
            loading = cluster in self._loading
        apps = {}
        for application in config["applications"]:
            placed = self._placed(cluster, application.get("args") or {})
            status = "RUNNING" if placed and not loading else "DEPLOYING"
            apps[application["name"]] = _app_details(application, status)
        return {"deploy_mode": "MULTI_APP", "applications": apps}

    def running(self, *, cluster: str = "") -> bool:
        apps = self.details(cluster=cluster)["applications"]
        return bool(apps) and all(a["status"] == "RUNNING" for a in apps.values())

    def stop(self) -> None:
        pass

    def _placed(self, cluster: str, args: dict[str, Any]) -> bool:
        if self._ready_workers is None:
            return True
        replicas = args.get("replicas") or {}
        low, high = int(replicas.get("min", 1)), int(replicas.get("max", 1))
        # As deployment_options: min == max pins num_replicas, else Serve starts at initial.
        wanted = high if low == high else int(replicas.get("initial", max(1, low)))
        return self._ready_workers(cluster) >= wanted


def _app_details(application: dict[str, Any], status: str) -> dict[str, Any]:
    """One application of Ray's ServeInstanceDetails, each deployment HEALTHY when RUNNING."""
    name = application["name"]
    healthy = "HEALTHY" if status == "RUNNING" else "UPDATING"
    deployments = {
        d["name"]: {"name": d["name"], "status": healthy, "message": ""}
        for d in application.get("deployments") or []
    }
    return {
        "name": name,
        "status": status,
        "message": "" if status == "RUNNING" else "Deploying the application (model loading).",
        "route_prefix": application.get("route_prefix", f"/{name}"),
        "deployments": deployments,
    }


def ready_worker_pods(kubectl: KubectlRunner, namespace: str, cluster: str) -> int:
    """Worker pods of a RayCluster that are Running and Ready, and not being deleted."""
    got = kubectl(
        "get", "pods", "-n", namespace, "-l", f"ray.io/cluster={cluster},ray.io/node-type=worker",
        "-o", "json", check=False,
    )  # fmt: skip
    if got.returncode != 0:
        return 0
    return sum(1 for pod in json.loads(got.stdout)["items"] if pod_ready(pod))


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return (
        (pod.get("status") or {}).get("phase") == "Running"
        and not pod["metadata"].get("deletionTimestamp")
        and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    )


class RayHeads:
    """The Ray head pods' HTTP endpoints, served to KubeRay as its HTTP proxy.

    KubeRay calls ``http://<head-svc>.<ns>.svc.cluster.local:8265/api/serve/...`` and
    ``http://<pod-ip>:8000/-/healthz``; with ``HTTP_PROXY`` pointing here, both arrive
    with the full URL. A namespace answers only once a test gave it a ``LocalServe``;
    until then (and for any other address) the answer is 503, as from a head whose
    dashboard is not up: KubeRay keeps the RayService not ready.
    """

    def __init__(self, kubectl: KubectlRunner) -> None:
        self.kubectl = kubectl
        self.serves: dict[str, LocalServe | ReportedServe] = {}
        self.requests: list[tuple[str, str]] = []
        self._pods: dict[str, tuple[str, str]] = {}
        handler = _handler_for(self)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self, namespace: str) -> LocalServe:
        """Runs the Serve applications KubeRay submits to the heads of ``namespace``."""
        local = LocalServe(namespace)
        self.serves[namespace] = local
        return local

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for local in self.serves.values():
            local.stop()

    def report(self, namespace: str) -> ReportedServe:
        """Reports what KubeRay submits to the heads of ``namespace`` as running once the
        cluster's Ready workers can hold its replicas (see ``ReportedServe``)."""
        reported = ReportedServe(
            namespace, ready_workers=lambda c: ready_worker_pods(self.kubectl, namespace, c)
        )
        self.serves[namespace] = reported
        return reported

    def pod_of_ip(self, ip: str) -> tuple[str, str] | None:
        """(namespace, RayCluster) of the pod with this IP."""
        # KubeRay checks each head every 2 s: remember what was found (IPs are not
        # reused within a session's few dozen pods).
        if ip in self._pods:
            return self._pods[ip]
        got = self.kubectl(
            "get", "pods", "-A", f"--field-selector=status.podIP={ip}", "-o", "json", check=False
        )
        items = json.loads(got.stdout)["items"] if got.returncode == 0 else []
        if not items:
            return None
        meta = items[0]["metadata"]
        found = (str(meta["namespace"]), str((meta.get("labels") or {}).get("ray.io/cluster", "")))
        self._pods[ip] = found
        return found

    def route(self, method: str, url: str, body: bytes) -> tuple[int, dict[str, Any] | str]:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        self.requests.append((method, url))
        if parts.path == PROXY_HEALTH:
            namespace, cluster = self.pod_of_ip(host) or ("", "")
            local = self.serves.get(namespace)
            healthy = local is not None and local.running(cluster=cluster)
            return (200, "success") if healthy else (503, "proxy not running")
        labels = host.split(".")
        # <cluster>-head-svc.<namespace>.svc.cluster.local
        if len(labels) < 3 or labels[2] != "svc" or parts.path != SERVE_APPLICATIONS:
            return 502, f"no such endpoint here: {url}"
        local = self.serves.get(labels[1])
        if local is None:
            return 503, "no Ray runs for this namespace"
        cluster = labels[0].removesuffix("-head-svc")
        if method == "PUT":
            local.submit(json.loads(body), cluster=cluster)
            return 200, {}
        return 200, local.details(cluster=cluster)


def _handler_for(heads: RayHeads) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            code, payload = heads.route(self.command, self.path, self.rfile.read(length))
            data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


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


SMOLLM_POOL = """\
apiVersion: kascade.io/v1alpha1
kind: LocalModelPool
metadata: {name: tiny}
spec:
  model: {runtime: llama-cpp, source: "builtin://smollm2-135m-instruct"}
  replicas: {min: 1, max: 1}
  resources: {cpu: "1", memory: 1Gi}
"""
"""A one-replica SmolLM2 pool named ``tiny`` (its endpoint is replaced by a sim-expert
acting as a pool where a test runs the gateway with ``pools_at``)."""


def sim_expert_manifest(*, name: str, port: int, pricing: dict[str, float]) -> str:
    """A CloudExpert for a local ``kascade sim-expert`` (OpenAI-compatible, $100 a day)."""
    return (
        "apiVersion: kascade.io/v1alpha1\n"
        "kind: CloudExpert\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        "  provider: openai-compatible\n"
        f"  endpoint: http://127.0.0.1:{port}\n"
        "  allowInsecureHttp: true\n"
        "  model: sim-large\n"
        f"  pricing: {json.dumps(pricing)}\n"
        "  budget: {limitUSD: 100, window: calendar-day}\n"
    )


@contextlib.contextmanager
def running_sims(*args: list[str]) -> Iterator[list[int]]:
    """One ``kascade sim-expert`` per argument list, each on a free port; yields the
    ports once all listen, and stops them after."""
    ports = [free_port() for _ in args]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kascade.cli", "sim-expert", "--port", str(port), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port, extra in zip(ports, args, strict=True)
    ]
    try:
        for port in ports:
            wait_for_port(port)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
