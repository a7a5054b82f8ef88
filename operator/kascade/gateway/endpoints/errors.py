"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json

from aiohttp import web


class ApiError(Exception):
    """An error answered to the client; nothing has been charged when it is raised."""

    def __init__(
        self,
        *,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        return json.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        ).encode()

    def response(self, *, extra_headers: dict[str, str] | None = None) -> web.Response:
        """The aiohttp response for this error."""
        headers = {**self.headers, **(extra_headers or {})}
        return web.Response(
            status=self.status,
            body=self.body(),
            content_type="application/json",
            headers=headers,
        )
