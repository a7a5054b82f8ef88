"""Choosing the backends from a URL."""

from __future__ import annotations

from pathlib import Path

from kascade.gateway.ledger import (
    _memory_ledger,
    _memory_throttle,
    _protocols,
    _records,
    _redis_conn,
    _redis_ledger,
    _redis_throttle,
)


def open_backends(
    *,
    url: str | None,
    checkpoint_path: Path | None,
    reservation_ttl_s: float = _records.DEFAULT_RESERVATION_TTL_S,
    key_prefix: str = "kascade:",
) -> tuple[_protocols.Ledger, _protocols.Throttle]:
    """The ledger and throttle for ``url``.

    ``None`` or ``"memory://"`` gives the in-memory backends (one replica; spend
    checkpointed to ``checkpoint_path`` if given); ``redis://``, ``rediss://`` or
    ``unix://`` gives the Redis backends shared by all replicas (``checkpoint_path``
    is ignored: Redis persists; every key starts with ``key_prefix``). Nothing connects
    until the first call. A reservation left open longer than ``reservation_ttl_s``
    becomes worst-case spend.
    """
    if url is None or url == "memory://":
        memory = _memory_ledger.MemoryLedger(
            checkpoint_path=checkpoint_path, reservation_ttl_s=reservation_ttl_s
        )
        return memory, (_memory_throttle.MemoryThrottle())
    if url.startswith(("redis://", "rediss://", "unix://")):
        return (
            _redis_ledger.RedisLedger(
                url=url, key_prefix=key_prefix, reservation_ttl_s=reservation_ttl_s
            ),
            _redis_throttle.RedisThrottle(url=url, key_prefix=key_prefix),
        )
    raise ValueError(
        f"ledger URL {_redis_conn.redact_url(url)!r} is not supported: use 'memory://' "
        "(or none) for one replica, or 'redis://host:port/db' / 'rediss://…' for several"
    )
