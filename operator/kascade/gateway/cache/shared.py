"""The exact cache shared by gateway replicas through Redis (when the ledger is Redis).

A second level behind each replica's in-process LRU: a local miss asks Redis, a store
writes both. The cache is an optimisation, so Redis errors count as misses (fail
open), unlike the ledger, which fails closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

import redis.asyncio as redis_asyncio
from redis import exceptions as redis_exceptions

from kascade.gateway.cache import memory as cache_mod

log = logging.getLogger("kascade.gateway")
_TIMEOUT_S = 0.25


class SharedExactCache:
    """Completions keyed by a digest of the exact-cache key, with the policy's TTL."""

    def __init__(self, *, url: str, namespace: str, key_prefix: str = "kascade:") -> None:
        self._client = redis_asyncio.Redis.from_url(
            url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S
        )
        self._prefix = f"{key_prefix}cache:{namespace}:"
        self._tasks: set[asyncio.Task[None]] = set()

    def _key(self, key: cache_mod.ExactKey) -> str:
        # repr() of tuples of str/int/float/None is the same in every replica.
        return self._prefix + hashlib.blake2b(repr(key).encode(), digest_size=20).hexdigest()

    async def get(self, key: cache_mod.ExactKey) -> dict[str, Any] | None:
        """The stored entry (`completion`, `route`, `confidence`), or None."""
        try:
            raw = await self._client.get(self._key(key))
        except (redis_exceptions.RedisError, OSError) as exc:
            log.debug("Shared cache lookup failed: %s", exc)
            return None
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
        except ValueError:
            return None
        return entry if isinstance(entry, dict) and "completion" in entry else None

    def put(
        self,
        key: cache_mod.ExactKey,
        *,
        completion: dict[str, Any],
        route: str,
        confidence: float | None,
        ttl_seconds: float,
    ) -> None:
        """Stores in the background: the answer is not held back for the cache."""
        value = json.dumps({"completion": completion, "route": route, "confidence": confidence})
        task = asyncio.get_running_loop().create_task(
            self._set(self._key(key), value, max(1, round(ttl_seconds)))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _set(self, key: str, value: str, ttl: int) -> None:
        try:
            await self._client.set(key, value, ex=ttl)
        except (redis_exceptions.RedisError, OSError) as exc:
            log.debug("Shared cache store failed: %s", exc)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()
