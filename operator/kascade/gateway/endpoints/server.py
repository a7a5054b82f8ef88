"""The gateway HTTP server (aiohttp on uvloop): routes, config reload, entry point."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from kascade.gateway import config as config_mod
from kascade.gateway import ledger, runtime
from kascade.gateway.cache import shared as shared_cache
from kascade.gateway.endpoints import errors, feedback, inbound, status
from kascade.gateway.experts import escalation, providers
from kascade.gateway.observe import audit as audit_mod
from kascade.gateway.observe import metrics as metrics_mod
from kascade.gateway.route import pipeline, pressure

log = logging.getLogger("kascade.gateway")
STATE: web.AppKey[pipeline.State] = web.AppKey("state", pipeline.State)
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
    try:
        inbound.authenticate(state.runtime, http)
    except errors.ApiError as exc:
        return exc.response()
    return web.Response(body=state.runtime.models_body, content_type="application/json")


async def _healthz(http: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _readyz(http: web.Request) -> web.Response:
    state = http.app[STATE]
    return web.Response(text="ready" if state.runtime.policies is not None else "not ready")


async def _metrics(http: web.Request) -> web.Response:
    state = http.app[STATE]
    # Budget remaining is read from the ledger at scrape time (shared across replicas
    # with Redis), not tracked per request.
    for name, expert in state.experts.items():
        if name not in state.runtime.config.experts:
            continue
        try:
            snap = await state.escalator.ledger.snapshot(expert=name, budget=expert.budget)
        except ledger.LedgerError:
            continue
        state.metrics.budget_remaining.labels(name).set(
            float(ledger.nanos_to_usd(snap.remaining_nanos))
        )
    body = state.metrics.render()
    return web.Response(body=body, headers={"content-type": "text/plain; version=0.0.4"})


async def _status(http: web.Request) -> web.Response:
    state = http.app[STATE]
    try:
        inbound.authenticate(state.runtime, http)
    except errors.ApiError as exc:
        return exc.response()
    return _json(await status.collect(state))


async def _feedback(http: web.Request) -> web.Response:
    state = http.app[STATE]
    try:
        inbound.authenticate(state.runtime, http)
        raw = await inbound.read_body(http, limit=state.runtime.config.limits.max_body_bytes)
        recorded = feedback.record(state, raw=raw)
    except errors.ApiError as exc:
        return exc.response()
    return _json(recorded)


def build_app(
    *,
    config: config_mod.GatewayConfig,
    config_path: Path | None,
    audit_path: str | None,
) -> web.Application:
    """The aiohttp application; backends open on startup and close on cleanup."""
    app = web.Application(client_max_size=1 << 30)

    async def lifecycle(app: web.Application) -> Any:
        checkpoint = config.ledger.checkpoint_path
        ledger_backend, throttle = ledger.open_backends(
            url=config.ledger.url, checkpoint_path=Path(checkpoint) if checkpoint else None
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
        url = config.ledger.url or ""
        if url.startswith(("redis://", "rediss://")):
            # Replicas sharing a Redis ledger also share exact-cache answers.
            state.shared_cache = shared_cache.SharedExactCache(url=url, namespace=config.namespace)
        app[STATE] = state
        watcher_task = None
        if config_path is not None:
            watcher = ConfigWatcher(path=config_path, state=state)
            watcher_task = asyncio.get_running_loop().create_task(watcher.run())
        yield
        if watcher_task is not None:
            watcher_task.cancel()
        if state.shared_cache is not None:
            await state.shared_cache.close()
        await session.close()
        await ledger_backend.close()
        await throttle.close()
        state.audit.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/kascade/status", _status)
    app.router.add_post("/v1/kascade/feedback", _feedback)
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
    p.add_argument("--audit-log", default=None, help="file for JSON audit lines, or - for stdout")
    p.add_argument("--log-level", default="INFO")
    return p


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
    app = build_app(config=config, config_path=Path(args.config), audit_path=args.audit_log)
    app.on_startup.append(_tune_gc)
    try:
        web.run_app(
            app,
            host=args.host,
            port=args.port,
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
