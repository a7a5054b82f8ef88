"""The gateway HTTP server (aiohttp on uvloop): routes, config reload, entry point."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from kascade.gateway import config as config_mod
from kascade.gateway import ledger, redis_source, runtime
from kascade.gateway.cache import shared as shared_cache
from kascade.gateway.endpoints import errors, feedback, inbound, readiness, status
from kascade.gateway.experts import escalation, providers
from kascade.gateway.observe import audit as audit_mod
from kascade.gateway.observe import loop as loop_monitor
from kascade.gateway.observe import metrics as metrics_mod
from kascade.gateway.observe import scrape
from kascade.gateway.route import kept_answers, kept_answers_shared, pipeline, pressure, shadow
from kascade.gateway.tenants import access
from kascade.gateway.tenants import keys as keys_mod

log = logging.getLogger("kascade.gateway")
STATE: web.AppKey[pipeline.State] = web.AppKey("state", pipeline.State)
# AppKey's second argument must be a class; ``int | None`` is not one (typed by the annotation).
ADMIN_PORT: web.AppKey[int | None] = web.AppKey("admin_port", object)  # type: ignore[arg-type]
RELOAD_SECONDS = 1.0


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    # stat() follows symlinks, so a ConfigMap's swapped `..data` link changes the inode.
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class ConfigWatcher:
    """Polls the config file and swaps the runtime when it changes and is valid."""

    def __init__(self, *, path: Path, state: pipeline.State) -> None:
        self.path = path
        self.state = state
        self.identity = _file_identity(path)
        self.reloads = 0

    def check(self) -> bool:
        """Reloads if the file changed; True when a new config went live."""
        identity = _file_identity(self.path)
        if identity is None or identity == self.identity:
            return False
        self.identity = identity
        try:
            config = config_mod.load_config(self.path)
            if config.ledger != self.state.runtime.config.ledger:
                log.warning("Ignored ledger change in %s: it takes effect on restart", self.path)
            new = runtime.build(
                config=config, previous=self.state.runtime, experts=self.state.experts
            )
        except config_mod.ConfigError as exc:
            log.error("Rejected new gateway config; the previous one keeps serving: %s", exc)
            return False
        self.state.runtime = new
        self.reloads += 1
        log.info("Reloaded gateway config path=%s policies=%d", self.path, len(new.policies))
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_SECONDS)
            try:
                self.check()
            except Exception:  # A reload bug must not kill the watcher.
                log.exception("Failed to check the gateway config for changes")


def _json(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(), status=status, content_type="application/json"
    )


async def _chat(http: web.Request) -> web.StreamResponse:
    return await pipeline.handle_chat(http.app[STATE], http)


async def _models(http: web.Request) -> web.Response:
    state = http.app[STATE]
    rt = state.runtime
    try:
        caller = inbound.authenticate(rt, http)
    except errors.ApiError as exc:
        return exc.response()
    allowed = caller.tenant.policies if caller.tenant is not None else None
    if not caller.authenticated and rt.keys_required:
        allowed = rt.anonymous_policies
    if allowed is None:
        return web.Response(body=rt.models_body, content_type="application/json")
    # Only what this caller may call: a tenant learns nothing of other teams' policies.
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "kascade"}
        for name in sorted(allowed)
        if name in rt.policies
    ]
    return _json({"object": "list", "data": data})


async def _healthz(http: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _readyz(http: web.Request) -> web.Response:
    ready, detail = await readiness.check(http.app[STATE])
    return _json({"ready": ready, **detail}, status=200 if ready else 503)


async def _metrics(http: web.Request) -> web.Response:
    state = http.app[STATE]
    # Budgets are read from the ledger at scrape time (shared across replicas with
    # Redis), not tracked per request.
    await scrape.refresh(state)
    body = state.metrics.render()
    return web.Response(body=body, headers={"content-type": "text/plain; version=0.0.4"})


async def _status(http: web.Request) -> web.Response:
    state = http.app[STATE]
    if http.app[ADMIN_PORT] is None:  # On the main port it needs a key like any call.
        try:
            inbound.authenticate(state.runtime, http)
        except errors.ApiError as exc:
            return exc.response()
    return _json(await status.collect(state))


async def _feedback(http: web.Request) -> web.Response:
    state = http.app[STATE]
    try:
        caller = inbound.authenticate(state.runtime, http)
        raw = await inbound.read_body(http, limit=state.runtime.config.limits.max_body_bytes)
        # Who rates, so a rating labels only the rater's own requests (never the key).
        who = kept_answers.caller_identity(caller, access.presented_key(http.headers))
        recorded = await feedback.record(state, raw=raw, caller=who)
    except errors.ApiError as exc:
        return exc.response()
    return _json(recorded)


def _key_watcher(state: pipeline.State) -> keys_mod.KeyWatcher:
    def swap(ring: keys_mod.KeyRing) -> None:
        state.runtime.keyring = ring

    return keys_mod.KeyWatcher(
        current=lambda: (state.runtime.config, state.runtime.keyring), swap=swap
    )


ADMIN_PATHS = frozenset({"/metrics", "/v1/kascade/status", "/healthz", "/readyz"})


def _port_split(admin_port: int) -> Any:
    """Serves /metrics and /v1/kascade/status only on the admin port, and only those
    (and health checks) there: the Service exposes the main port alone."""

    @web.middleware
    async def split(http: web.Request, handler: Any) -> web.StreamResponse:
        sockname = http.transport.get_extra_info("sockname") if http.transport else None
        on_admin = isinstance(sockname, tuple) and sockname[1] == admin_port
        if on_admin != (http.path in ADMIN_PATHS) and http.path not in ("/healthz", "/readyz"):
            return web.Response(status=404, text="not found")
        response: web.StreamResponse = await handler(http)
        return response

    return split


def _open_state(
    config: config_mod.GatewayConfig, audit_path: str | None
) -> tuple[pipeline.State, ledger.Ledger, ledger.Throttle]:
    """The process state, with the ledger and throttle backends it was built on
    (closed last, after the escalator's settlements)."""
    checkpoint = config.ledger.checkpoint_path
    url = redis_source.ledger_url(config.ledger)
    prefix = redis_source.key_prefix(config.namespace)
    ledger_backend, throttle = ledger.open_backends(
        url=url,
        checkpoint_path=Path(checkpoint) if checkpoint else None,
        reservation_ttl_s=config.ledger.reservation_ttl_seconds,
        key_prefix=prefix,
    )
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
    metrics = metrics_mod.Metrics()
    escalator = escalation.Escalator(
        session=session,
        ledger_backend=ledger_backend,
        throttle=throttle,
        credentials=providers.Credentials(),
        metrics=metrics,
    )
    experts: dict[str, escalation.ExpertState] = {}
    state = pipeline.State(
        runtime=runtime.build(config=config, previous=None, experts=experts),
        session=session,
        escalator=escalator,
        pressure=pressure.Pressure(escalator=escalator, metrics=metrics),
        metrics=metrics,
        audit=audit_mod.AuditLog(path=audit_path),
        experts=experts,
    )
    if (url or "").startswith(("redis://", "rediss://")):
        # Replicas sharing a Redis ledger also share exact-cache answers.
        state.shared_cache = shared_cache.SharedExactCache(
            url=url or "", namespace=config.namespace
        )
        # ...and the answers a rating may label, whichever replica the rating reaches.
        state.quality = shadow.Quality(
            kept=kept_answers_shared.SharedKeptAnswers(url=url or "", key_prefix=prefix)
        )
    return state, ledger_backend, throttle


def _start_background(state: pipeline.State, config_path: Path | None) -> list[asyncio.Task[None]]:
    """The loop monitor, the key watcher and (with a config file) the config watcher."""
    loop = asyncio.get_running_loop()
    tasks = [
        loop.create_task(loop_monitor.watch(state.metrics)),
        loop.create_task(_key_watcher(state).run()),
    ]
    if config_path is not None:
        watcher = ConfigWatcher(path=config_path, state=state)
        tasks.append(asyncio.get_running_loop().create_task(watcher.run()))
    return tasks


async def _close_state(
    state: pipeline.State, ledger_backend: ledger.Ledger, throttle: ledger.Throttle
) -> None:
    """Closes what `_open_state` opened; the ledger only after the escalator."""
    await state.quality.close()
    if state.shared_cache is not None:
        await state.shared_cache.close()
    await state.escalator.close()  # settlements of cancelled calls finish before the ledger
    await state.session.close()
    await ledger_backend.close()
    await throttle.close()
    state.audit.close()


def _add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/kascade/status", _status)
    app.router.add_post("/v1/kascade/feedback", _feedback)


def build_app(
    *,
    config: config_mod.GatewayConfig,
    config_path: Path | None,
    audit_path: str | None,
    admin_port: int | None = None,
) -> web.Application:
    """The aiohttp application; backends open on startup and close on cleanup.

    With ``admin_port``, metrics and status answer only on that port (see ``main``)."""
    middlewares = [] if admin_port is None else [_port_split(admin_port)]
    app = web.Application(client_max_size=1 << 30, middlewares=middlewares)

    async def lifecycle(app: web.Application) -> Any:
        state, ledger_backend, throttle = _open_state(config, audit_path)
        app[STATE] = state
        tasks = _start_background(state, config_path)
        yield
        for task in tasks:
            task.cancel()
        await _close_state(state, ledger_backend, throttle)

    app[ADMIN_PORT] = admin_port
    app.cleanup_ctx.append(lifecycle)
    _add_routes(app)
    return app


async def _tune_gc(app: web.Application) -> None:
    # Startup objects (modules, config, compiled regexes) live for the whole process:
    # freezing them keeps every full collection from walking them again, and a larger
    # first-generation threshold makes collections rarer. Both cut CPU per request.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kascade gateway", description=__doc__)
    p.add_argument("--config", required=True, help="gateway config file (YAML or JSON)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help="serve /metrics and /v1/kascade/status only on this port (not on --port)",
    )
    p.add_argument("--audit-log", default=None, help="file for JSON audit lines, or - for stdout")
    p.add_argument("--log-level", default="INFO")
    return p


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> int:
    """Runs the gateway until SIGINT/SIGTERM; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        config = config_mod.load_config(args.config)
    except config_mod.ConfigError as exc:
        log.error("%s", exc)
        return 2
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        loop = asyncio.new_event_loop()
    app = build_app(
        config=config,
        config_path=Path(args.config),
        audit_path=args.audit_log,
        admin_port=args.admin_port,
    )
    app.on_startup.append(_tune_gc)
    ports = [args.port] if args.admin_port is None else [args.port, args.admin_port]
    try:
        web.run_app(
            app,
            sock=[_listen(args.host, port) for port in ports],
            access_log=None,
            print=None,
            handle_signals=True,
            shutdown_timeout=10,
            loop=loop,
        )
    except config_mod.ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
