"""Inbound checks shared by every endpoint: who is calling, and bounded body reads."""

from __future__ import annotations

from aiohttp import web

from kascade.gateway import runtime
from kascade.gateway.endpoints import errors
from kascade.gateway.tenants import access


def identify(rt: runtime.Runtime, http: web.Request) -> access.Caller:
    """The caller; 401 for an unknown key, or for no key where no policy is anonymous."""
    caller = access.identify(
        ring=rt.keyring,
        tenants=rt.tenants,
        required=rt.keys_required,
        key=access.presented_key(http.headers),
    )
    if not rt.anonymous_policies:  # no policy takes anonymous callers: refuse them now
        access.require_key(caller=caller, required=rt.keys_required, allow_anonymous=False)
    return caller


def authenticate(rt: runtime.Runtime, http: web.Request) -> access.Caller:
    """For endpoints that name no policy: like ``identify``."""
    return identify(rt, http)


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
