"""``kascade operator``: runs the kopf operator in this process.

With leader election (``--leader-elect``, the default in a pod) the process first waits
as a standby until it holds the operator's Lease (``kascade.controller.leader``), and
only then starts kopf; a leader that loses the Lease exits at once with status 1, so
Kubernetes restarts it as a standby. Two replicas never act at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("kascade.leader")

# Where a pod's ServiceAccount namespace is mounted: present only when running in a pod.
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _env_flag(name: str) -> bool | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _default_namespace() -> str | None:
    """The Lease's namespace: the operator's own (the chart sets it), else the pod's."""
    env = os.environ.get("KASCADE_OPERATOR_NAMESPACE", "").strip()
    if env:
        return env
    if POD_NAMESPACE_FILE.is_file():
        return POD_NAMESPACE_FILE.read_text().strip() or None
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kascade operator",
        description="Reconcile LocalModelPools, CloudExperts and RoutingPolicies.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--all-namespaces", action="store_true", help="watch every namespace (the default)"
    )
    scope.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeatable)",
    )
    # The chart sets KASCADE_LOG_LEVEL and KASCADE_HEALTH_PORT on the operator Deployment.
    parser.add_argument(
        "--log-level",
        default=os.environ.get("KASCADE_LOG_LEVEL", "INFO").upper(),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    health_port = os.environ.get("KASCADE_HEALTH_PORT")
    parser.add_argument(
        "--liveness",
        default=f"http://0.0.0.0:{health_port}/healthz" if health_port else None,
        metavar="URL",
        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    _add_leader_flags(parser)
    return parser


def _add_leader_flags(parser: argparse.ArgumentParser) -> None:
    elect = _env_flag("KASCADE_LEADER_ELECT")
    parser.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=POD_NAMESPACE_FILE.is_file() if elect is None else elect,
        help="act only while holding the operator's Lease, so several replicas can run "
        "(default: on in a pod, off elsewhere; env KASCADE_LEADER_ELECT)",
    )
    parser.add_argument(
        "--lease-name",
        default=os.environ.get("KASCADE_LEASE_NAME", "kascade-operator"),
        metavar="NAME",
        help="the coordination.k8s.io Lease (env KASCADE_LEASE_NAME)",
    )
    parser.add_argument(
        "--lease-namespace",
        default=None,
        metavar="NS",
        help="namespace of the Lease (default: KASCADE_OPERATOR_NAMESPACE, else the pod's)",
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the operator until interrupted."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )

    import kopf

    from kascade.controller import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.log_level == "DEBUG")
    kopf_args: dict[str, Any] = {
        "standalone": True,
        "clusterwide": not args.namespace,
        "namespaces": args.namespace,
        "liveness_endpoint": args.liveness,
    }
    if not args.leader_elect:
        kopf.run(**kopf_args)
        return 0
    namespace = args.lease_namespace or _default_namespace()
    if not namespace:
        parser.error("--leader-elect needs --lease-namespace or KASCADE_OPERATOR_NAMESPACE")
    return asyncio.run(_run_elected(kopf_args, namespace=namespace, lease_name=args.lease_name))


async def _run_elected(kopf_args: dict[str, Any], *, namespace: str, lease_name: str) -> int:
    """Standby until the Lease is held, then kopf while it is held; release on the way out."""
    import kopf

    from kascade.controller import leader
    from kascade.controller.kube import Kube

    kube = await Kube.connect()
    elector = leader.LeaderElector(kube, namespace=namespace, name=lease_name)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    # The liveness probe must pass while standing by, or the kubelet would restart the
    # standby forever; kopf serves the same endpoint once this one has closed.
    health = await _serve_standby_health(kopf_args["liveness_endpoint"])
    log.info("Standby: waiting for Lease %s/%s as %s", namespace, lease_name, elector.identity)
    try:
        acquired = await elector.acquire(stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if health is not None:
            await health.cleanup()
    if not acquired or stop.is_set():
        # A signal that came while the Lease was being taken: hand it straight back.
        await elector.release()
        log.info("Stopped while standing by")
        await kube.close()
        return 0
    holder = asyncio.create_task(elector.hold(_lost))
    try:
        await kopf.operator(**kopf_args)
    finally:
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holder
        await elector.release()
        await kube.close()
    return 0


def _lost(reason: str) -> None:
    """Leadership is gone: stop acting at once. Exiting (rather than shutting kopf down
    gracefully, which would still run handlers) is what controller-runtime does; the
    container restarts and stands by."""
    log.critical("Lost the operator Lease (%s); exiting to restart as a standby", reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(1)


async def _serve_standby_health(url: str | None) -> Any:
    """Serves 200 on the liveness endpoint's path; returns the runner to clean up."""
    if not url:
        return None
    from aiohttp import web

    parts = urlsplit(url)

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get(parts.path or "/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, parts.hostname or "0.0.0.0", parts.port or 80).start()
    return runner
