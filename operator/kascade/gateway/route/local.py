"""The local first pass: one call to the pool's OpenAI-compatible app."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from kascade.gateway import config as config_mod
from kascade.gateway.experts import escalation
from kascade.gateway.route import confidence as confidence_mod


@dataclass(frozen=True)
class LocalAnswer:
    completion: dict[str, Any]
    confidence: float | None


class Overflow(Exception):
    """The pool is saturated (HTTP 429)."""

    def __init__(self, *, retry_after: float | None) -> None:
        super().__init__("pool saturated")
        self.retry_after = retry_after


class LocalFailure(Exception):
    """The pool could not answer (connection error, timeout, 5xx, bad body)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _request(
    *, pool: config_mod.PoolConfig, body: dict[str, Any], stream: bool
) -> tuple[str, bytes, aiohttp.ClientTimeout]:
    payload = {**body, "model": pool.model, "stream": stream}
    url = pool.endpoint.rstrip("/") + "/v1/chat/completions"
    return url, json.dumps(payload).encode(), aiohttp.ClientTimeout(total=pool.timeout_seconds)


def _status(resp: aiohttp.ClientResponse) -> None:
    if resp.status == 429:
        raise Overflow(retry_after=escalation.retry_after_seconds(resp.headers.get("retry-after")))
    if resp.status != 200:
        raise LocalFailure(f"http_{resp.status}")


async def complete(
    *,
    session: aiohttp.ClientSession,
    pool: config_mod.PoolConfig,
    body: dict[str, Any],
    method: str,
) -> LocalAnswer:
    """Asks the pool (non-streaming) and reads the answer's confidence."""
    url, data, timeout = _request(pool=pool, body=body, stream=False)
    try:
        async with session.post(
            url, data=data, headers={"content-type": "application/json"}, timeout=timeout
        ) as resp:
            _status(resp)
            completion = await resp.json(content_type=None)
            headers = resp.headers
    except TimeoutError:
        raise LocalFailure("timeout") from None
    except aiohttp.ClientError:
        raise LocalFailure("connection_error") from None
    except ValueError:
        raise LocalFailure("bad_response") from None
    if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
        raise LocalFailure("bad_response")
    conf = confidence_mod.extract(body=completion, headers=headers, method=method)
    return LocalAnswer(completion=completion, confidence=conf)


@contextlib.asynccontextmanager
async def open_stream(
    *,
    session: aiohttp.ClientSession,
    pool: config_mod.PoolConfig,
    body: dict[str, Any],
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Opens a streaming call to the pool; yields the 200 response to copy through."""
    url, data, timeout = _request(pool=pool, body=body, stream=True)
    try:
        async with session.post(
            url, data=data, headers={"content-type": "application/json"}, timeout=timeout
        ) as resp:
            _status(resp)
            yield resp
    except TimeoutError:
        raise LocalFailure("timeout") from None
    except aiohttp.ClientConnectionError:
        raise LocalFailure("connection_error") from None
