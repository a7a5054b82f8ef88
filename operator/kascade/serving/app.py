"""The Ray Serve application of one LocalModelPool.

``build_app`` is a Ray Serve application builder: a RayService ``serveConfigV2`` names
it as ``import_path: kascade.serving.app:build_app`` with the pool's
:class:`~kascade.serving.config.PoolServingConfig` (camelCase JSON) as ``args``.
"""

from __future__ import annotations

import json
from typing import Any

import starlette.requests
import starlette.responses
from ray import serve

from kascade.serving import config, deployment, server

__all__ = ["ModelDeployment", "build_app"]


class ModelDeployment:
    """The replica class: loads the model once, adapts Starlette to :class:`ChatServer`."""

    def __init__(self, args: dict[str, Any]) -> None:
        pool = config.PoolServingConfig.from_args(args)
        # A bad source raises here with the source and reason: the replica fails to
        # start and Ray Serve reports the message in the application's status.
        self._server = server.load_server(pool=pool)

    async def __call__(self, request: starlette.requests.Request) -> starlette.responses.Response:
        """Handles one HTTP request."""
        path = request.scope["path"]
        root = request.scope.get("root_path", "")
        if root and root != "/" and path.startswith(root):
            path = path[len(root) :] or "/"
        body = await request.body()
        reply = await self._server.handle(method=request.method, path=path, body=body)
        return to_starlette(reply)

    def check_health(self) -> None:
        """Ray Serve's periodic health check."""
        self._server.check_health()

    def counts(self) -> dict[str, int]:
        """Generations running now and streams whose client left early (read through a
        Serve handle, e.g. by tests; not served over HTTP)."""
        return {"generating": self._server.generating, "streamsLeft": self._server.streams_left}

    def __del__(self) -> None:
        server_ = getattr(self, "_server", None)
        if server_ is not None:
            server_.close()


def to_starlette(reply: server.Reply) -> starlette.responses.Response:
    """Turns a server reply into a Starlette response."""
    if isinstance(reply, server.StreamReply):
        return starlette.responses.StreamingResponse(
            reply.chunks,
            media_type="text/event-stream",
            headers={**reply.headers, "cache-control": "no-cache"},
        )
    return starlette.responses.Response(
        content=json.dumps(reply.body, separators=(",", ":")),
        status_code=reply.status,
        media_type="application/json",
        headers=reply.headers,
    )


def build_app(args: dict[str, Any] | config.PoolServingConfig) -> serve.Application:
    """Builds the pool's Ray Serve application from its serving config.

    ``args`` is the camelCase JSON dict of :class:`~kascade.serving.config.PoolServingConfig`
    (as in ``serveConfigV2``) or the model itself; invalid args raise
    ``pydantic.ValidationError`` naming the field.
    """
    pool = config.PoolServingConfig.from_args(args)
    options = deployment.deployment_options(pool)
    deployment_cls = serve.deployment(**options)(ModelDeployment)
    bound: serve.Application = deployment_cls.bind(pool.to_args())
    return bound
