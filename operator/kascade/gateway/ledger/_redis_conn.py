"""A Redis connection that fails closed fast, and Lua scripts called with EVALSHA."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import redis.asyncio as redis_asyncio
from redis import exceptions as redis_exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from kascade.gateway.ledger import _errors

# A dead or stuck Redis must fail the request's escalation quickly, not hang it.
SOCKET_TIMEOUT_S = 0.5
# Upper bound for one whole script call (connect + NOSCRIPT reload + EVALSHA).
CALL_TIMEOUT_S = 1.5
MAX_CONNECTIONS = 64
# After a failure, calls fail immediately for this long instead of each waiting for a
# timeout: with Redis down, every escalation would otherwise stall half a second.
DOWN_HOLD_S = 0.5

_UNAVAILABLE = (
    redis_exceptions.ConnectionError,
    redis_exceptions.TimeoutError,
    redis_exceptions.BusyLoadingError,
    redis_exceptions.ReadOnlyError,
    OSError,
    TimeoutError,
)


def redact_url(url: str) -> str:
    """The URL without its password, for error messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def check_prefix(key_prefix: str) -> None:
    """Raises ``ValueError`` unless ``key_prefix`` is usable in keys."""
    if not isinstance(key_prefix, str) or any(c in key_prefix for c in "{} \t\r\n"):
        raise ValueError(
            f"key_prefix must be a string without braces or whitespace, got {key_prefix!r}"
        )


class Script:
    """A Lua script: registered with SCRIPT LOAD once, then called by EVALSHA."""

    def __init__(self, *, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class Connection:
    """One client per backend; maps connection failures to ``LedgerUnavailable``."""

    def __init__(self, *, url: str, scripts: tuple[Script, ...]) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"Redis URL {redact_url(url)!r} must start with redis://, rediss:// or unix://"
            )
        self._url = redact_url(url)
        # A blocking pool: a burst of concurrent calls waits briefly for a connection
        # instead of failing with "too many connections".
        pool = redis_asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=CALL_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            # Retrying would multiply the wait before failing closed; one try only.
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            decode_responses=True,
        )
        self._client: redis_asyncio.Redis = redis_asyncio.Redis.from_pool(pool)
        self._scripts = scripts
        self._loaded = False
        self._loading = asyncio.Lock()
        self._down_until = 0.0
        self._down_reason = ""

    async def _load_scripts(self, *, force: bool = False) -> None:
        async with self._loading:  # a burst of first calls registers the scripts once
            if self._loaded and not force:
                return
            for script in self._scripts:
                sha = await self._client.script_load(script.source)
                if sha != script.sha:
                    raise _errors.LedgerError(f"Redis returned sha {sha} for script {script.name}")
            self._loaded = True

    async def call(
        self,
        script: Script,
        *,
        key: str,
        args: list[str | int | float],
        more_keys: tuple[str, ...] = (),
    ) -> Any:
        """Runs ``script`` atomically with ``KEYS = [key, *more_keys]``; the result as Redis
        returns it."""
        if time.monotonic() < self._down_until:
            raise _errors.LedgerUnavailable(
                f"Redis at {self._url} is unavailable ({self._down_reason}; retrying shortly)"
            )
        keys = (key, *more_keys)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                if not self._loaded:
                    await self._load_scripts()
                try:
                    return await self._client.evalsha(script.sha, len(keys), *keys, *args)
                except redis_exceptions.NoScriptError:
                    # The server restarted or SCRIPT FLUSH ran: register again and retry once.
                    await self._load_scripts(force=True)
                    return await self._client.evalsha(script.sha, len(keys), *keys, *args)
        except _UNAVAILABLE as exc:
            self._down_reason = f"{type(exc).__name__}: {exc}"
            self._down_until = time.monotonic() + DOWN_HOLD_S
            raise _errors.LedgerUnavailable(
                f"Redis at {self._url} is unavailable ({self._down_reason})"
            ) from None
        except redis_exceptions.RedisError as exc:
            raise _errors.LedgerError(
                f"Redis script {script.name} failed at {self._url}: {exc}"
            ) from None

    async def close(self) -> None:
        """Closes the client and its connection pool."""
        await self._client.aclose()
