"""``kascade up -f PATH``: run pools, experts and policies on this machine.

The same YAML that goes to Kubernetes is validated with the API models, compiled with
the operator's compiler, and run here: each LocalModelPool as a Ray Serve application
in a local Ray instance, the namespace's gateway as a child process. Ctrl-C stops
everything (the gateway process, Serve, and the Ray processes this command started).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from kascade.api import v1alpha1
from kascade.compile import gateway as compile_gateway
from kascade.gateway import config as gw
from kascade.local import objects


def _say(message: str) -> None:
    print(f"[kascade] {message}", flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kascade up",
        description="Run Kascade objects from YAML on this machine (embedded mode).",
        epilog="Expert credentials: a CloudExpert's credentials.secretRef {name, key} is read "
        "from the file SECRETS_DIR/<name>/<key> when --secrets-dir is given and the file "
        "exists, else from the environment variable KASCADE_SECRET_<NAME>_<KEY> (upper case, "
        "non-alphanumerics as '_'). An expert without its credential is left out with a "
        "warning; escalations then degrade to the local answer.",
    )
    p.add_argument("-f", "--filename", required=True, type=Path, help="file or directory")
    p.add_argument("--host", default="127.0.0.1", help="gateway address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    p.add_argument("--serve-port", type=int, default=8000, help="Ray Serve HTTP port")
    p.add_argument("--redis", default=None, metavar="URL", help="shared ledger (redis://...)")
    p.add_argument("--secrets-dir", type=Path, default=None, help="directory of Secret files")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path.home() / ".cache" / "kascade" / "embedded",
        help="where the in-memory ledger checkpoints spend",
    )
    p.add_argument("--audit-log", default=None, help="file for audit lines, or - for stdout")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may use")
    return p


def _credential_available(
    ref: v1alpha1.SecretKeyRef, secrets_dir: Path | None
) -> tuple[bool, gw.Credentials]:
    if secrets_dir is not None:
        file = Path(compile_gateway.secret_file(ref, root=str(secrets_dir)))
        if file.is_file():
            return True, gw.Credentials(file=str(file))
    env = compile_gateway.secret_env_var(ref)
    return bool(os.environ.get(env)), gw.Credentials(env=env)


def _wire_credentials(
    config: gw.GatewayConfig, loaded: objects.Loaded, secrets_dir: Path | None
) -> gw.GatewayConfig:
    """Points credentials at env vars or files; drops experts whose credential is missing."""
    experts = dict(config.experts)
    for expert in loaded.experts:
        name = expert.metadata.name
        if name not in experts or expert.spec.credentials is None:
            continue
        ref = expert.spec.credentials.secret_ref
        ok, creds = _credential_available(ref, secrets_dir)
        if ok:
            experts[name] = experts[name].model_copy(update={"credentials": creds})
            continue
        _say(
            f"WARNING: CloudExpert/{name}: credential not found (set "
            f"{compile_gateway.secret_env_var(ref)} or create "
            f"<secrets-dir>/{ref.name}/{ref.key}); it is unavailable and escalations "
            "to it degrade to the local answer"
        )
        del experts[name]
    policies = {
        pname: compile_gateway.without_unusable_experts(p, usable=experts)
        for pname, p in config.policies.items()
    }
    return config.model_copy(update={"experts": experts, "policies": policies})


def _wait_ready(url: str, *, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the gateway was not ready at {url} within {timeout:.0f}s")


def _ticker(label: str, stop: threading.Event) -> None:
    start = time.monotonic()
    while not stop.wait(5):
        _say(f"  ... {label} ({time.monotonic() - start:.0f}s)")


class _Refused(Exception):
    """Nothing was started: the message says why (printed to stderr, exit code 1)."""


def _load(args: argparse.Namespace) -> objects.Loaded:
    try:
        loaded = objects.load(args.filename)
    except (v1alpha1.ValidationFailed, objects.NamespaceConflict) as exc:
        raise _Refused(f"invalid objects, nothing was started:\n{exc}") from exc
    if not loaded.policies:
        raise _Refused(f"no RoutingPolicy in {args.filename}; nothing to serve")
    findings = objects.compile_findings(loaded)
    if findings.errors:
        raise _Refused(f"nothing was started. {objects.LEFT_OUT}\n" + "\n".join(findings.errors))
    return loaded


def _compile(args: argparse.Namespace, loaded: objects.Loaded, serve_base: str) -> gw.GatewayConfig:
    args.state_dir.mkdir(parents=True, exist_ok=True)
    compiled = compile_gateway.gateway_config(
        namespace=loaded.namespace,
        pools=loaded.pools,
        experts=loaded.experts,
        policies=loaded.policies,
        pool_endpoint=lambda p: f"{serve_base}/{p.metadata.name}",
        credentials="env",
        ledger_url=args.redis,
        checkpoint_path=None
        if args.redis
        else str(args.state_dir / f"{loaded.namespace}-ledger.json"),
        # Keys come from KASCADE_TENANT_KEYS_<SECRET> (comma separated); without any
        # Tenant the laptop gateway stays open, as a first contact should be.
        tenants=loaded.tenants,
        require_api_key=bool(loaded.tenants),
    )
    if compiled.missing:
        lines = [f"RoutingPolicy/{n}: missing {', '.join(r)}" for n, r in compiled.missing.items()]
        raise _Refused("unresolved references:\n" + "\n".join(lines))
    return _wire_credentials(compiled.config, loaded, args.secrets_dir)


def _serve_pools(
    args: argparse.Namespace, config: gw.GatewayConfig, loaded: objects.Loaded
) -> None:
    """Starts Ray and Serve and deploys every pool (Ray is imported only here)."""
    import ray
    from ray import serve

    from kascade.serving import app as serving_app

    serving = objects.serving_configs(loaded)
    _say(f"Starting Ray (serve on 127.0.0.1:{args.serve_port})")
    ray.init(
        num_cpus=args.num_cpus,
        include_dashboard=False,
        object_store_memory=200_000_000,
        log_to_driver=False,
        configure_logging=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": args.serve_port})
    for name in sorted(config.pools):
        pool_cfg = serving[name]
        _say(f"Loading LocalModelPool/{name} ({pool_cfg.model.source}) ...")
        stop_tick = threading.Event()
        threading.Thread(target=_ticker, args=(f"loading {name}", stop_tick), daemon=True).start()
        start = time.monotonic()
        try:
            serve.run(serving_app.build_app(pool_cfg), name=name, route_prefix=f"/{name}")
        finally:
            stop_tick.set()
        _say(f"LocalModelPool/{name} ready in {time.monotonic() - start:.1f}s")


def _start_gateway(args: argparse.Namespace, config: gw.GatewayConfig) -> subprocess.Popen[bytes]:
    config_path = Path(tempfile.mkdtemp(prefix="kascade-up-")) / "gateway.json"
    config_path.write_text(config.model_dump_json(by_alias=True, exclude_none=True, indent=2))
    command = [sys.executable, "-m", "kascade.cli", "gateway", "--config", str(config_path)]
    command += ["--host", args.host, "--port", str(args.port)]
    if args.audit_log:
        command += ["--audit-log", args.audit_log]
    return subprocess.Popen(command)


def _say_ready(endpoint: str, config: gw.GatewayConfig) -> None:
    policy = sorted(config.policies)[0]
    _say(f"Gateway ready at {endpoint} (policies: {', '.join(sorted(config.policies))})")
    _say("Try:")
    print(
        f"  curl -s -i {endpoint}/v1/chat/completions -H 'content-type: application/json' "
        f'-d \'{{"model": "{policy}", "messages": [{{"role": "user", '
        f'"content": "What is the capital of France?"}}]}}\'',
        flush=True,
    )
    _say("Press Ctrl-C to stop.")


def _stop_all(gateway: subprocess.Popen[bytes] | None) -> None:
    if gateway is not None and gateway.poll() is None:
        gateway.terminate()
        try:
            gateway.wait(timeout=10)
        except subprocess.TimeoutExpired:
            gateway.kill()
    if "ray" not in sys.modules:  # failed before Ray was started
        _say("Stopped.")
        return
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    _say("Stopped.")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        loaded = _load(args)
        config = _compile(args, loaded, f"http://127.0.0.1:{args.serve_port}")
    except _Refused as exc:
        print(f"kascade up: {exc}", file=sys.stderr)
        return 1
    # Both, explicitly: a shell script's background job starts with SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    gateway: subprocess.Popen[bytes] | None = None
    try:
        _serve_pools(args, config, loaded)
        gateway = _start_gateway(args, config)
        endpoint = f"http://{args.host}:{args.port}"
        _wait_ready(f"{endpoint}/readyz", proc=gateway, timeout=60)
        _say_ready(endpoint, config)
        while gateway.poll() is None:
            time.sleep(0.5)
        _say(f"The gateway exited with code {gateway.returncode}; stopping")
        return 1
    except KeyboardInterrupt:
        _say("Stopping ...")
        return 0
    finally:
        _stop_all(gateway)
