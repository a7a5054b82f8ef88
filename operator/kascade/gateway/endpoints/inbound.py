"""Inbound checks shared by every endpoint: API keys and bounded body reads."""

from __future__ import annotations

from aiohttp import web

from kascade.gateway import runtime
from kascade.gateway.endpoints import errors


def authenticate(rt: runtime.Runtime, http: web.Request) -> None:
    if rt.api_keys is None:
        return
    header = http.headers.get("authorization", "")
    key = header[7:].strip() if header[:7].lower() == "bearer " else http.headers.get("api-key")
    if not key or key not in rt.api_keys:
        raise errors.ApiError(
            status=401,
            message="Missing or invalid API key: send `Authorization: Bearer <key>`.",
            type="authentication_error",
            code="invalid_api_key",
        )


async def read_body(http: web.Request, *, limit: int) -> bytes:
    too_big = errors.ApiError(
        status=413,
        message=f"Request body is larger than the gateway's limit of {limit} bytes.",
        code="request_too_large",
    )
    length = http.content_length
    if length is not None:
        if length > limit:
            raise too_big
        return await http.read()
    chunks: list[bytes] = []
    total = 0
    async for chunk in http.content.iter_chunked(65536):
        total += len(chunk)
        if total > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)
