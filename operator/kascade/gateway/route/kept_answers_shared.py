"""Kept answers in Redis, shared by every gateway replica on one Redis ledger.

Behind a Service, a user's rating reaches any replica, most often not the one that
answered; with the in-process memory it would label nothing there. Here the answer is
a Redis value any replica reads, and the once-only claim is one ``SET NX`` on a key of
its own, so an expert's label on one replica and a rating on another cannot both
label a request.

Keys: ``kascade:<namespace>:kept:<digest>`` (the record) and ``...:<digest>:labelled``
(the claim), both expiring after ``max_age_s``; the digest is of the request id, so a
key's length never depends on input. Size (Redis ``MEMORY USAGE``): 0.26 KB per
answer, 1.0 KB with a combined score's 18 features, plus 0.1 KB once claimed, each for
``max_age_s`` (1 h): budget the Redis memory of a feedback-labelled policy at its
local answers per hour times that (100 per second: about 95 MB, 400 MB with vectors).

Failure: the record is written before the answer returns, with a short timeout; a
failed write is logged and the answer still returns (its rating will read as unknown).
A failed read or claim raises ``StoreUnavailable``, and nothing is labelled: a rating
gets reason ``unavailable``, and an expert's label is dropped. A claim that timed out
may still have been taken on the server, so counting the label anyway could label a
request twice (measured: 84 double labels in 300 requests when 750 racing claims hit
the 0.25 s timeout); a label dropped at random leaves the labels a uniform sample.
"""

from __future__ import annotations

import hashlib
import logging

import redis.asyncio as redis_asyncio
from redis import exceptions as redis_exceptions

from kascade.gateway.route import kept_answers

__all__ = ["SharedKeptAnswers"]

log = logging.getLogger("kascade.gateway")
_TIMEOUT_S = 0.25
_ERRORS = (redis_exceptions.RedisError, OSError)


class SharedKeptAnswers:
    """``kept_answers.KeptStore`` in Redis (see the module)."""

    def __init__(
        self, *, url: str, key_prefix: str, max_age_s: float = kept_answers.MAX_AGE_S
    ) -> None:
        self._client = redis_asyncio.Redis.from_url(
            url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S
        )
        self._prefix = f"{key_prefix}kept:"
        self._ttl = max(1, round(max_age_s))

    def _key(self, request_id: str) -> str:
        return self._prefix + hashlib.blake2b(request_id.encode(), digest_size=16).hexdigest()

    async def remember(self, request_id: str, kept: kept_answers.Kept) -> None:
        try:
            await self._client.set(self._key(request_id), kept.to_json(), ex=self._ttl)
        except _ERRORS as exc:
            log.warning("Kept answer not stored for ratings (Redis): %s", type(exc).__name__)

    async def find(self, request_id: str) -> kept_answers.Kept | None:
        try:
            raw = await self._client.get(self._key(request_id))
        except _ERRORS as exc:
            raise kept_answers.StoreUnavailable(type(exc).__name__) from None
        return kept_answers.Kept.from_json(raw) if raw is not None else None

    async def claim(self, request_id: str) -> bool:
        try:
            won = await self._client.set(
                self._key(request_id) + ":labelled", b"1", nx=True, ex=self._ttl
            )
        except _ERRORS as exc:
            raise kept_answers.StoreUnavailable(type(exc).__name__) from None
        return bool(won)

    async def close(self) -> None:
        await self._client.aclose()
