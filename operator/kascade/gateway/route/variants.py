"""A/B assignment: which variant of a policy serves a caller.

Sticky: a caller is identified by the request's ``user`` field (OpenAI's end-user id),
else the API key it presents, else its tenant; the identity and the policy name are
hashed to a point in [0, 1), and the variants' weights cut [0, 1) into consecutive
intervals. The same caller lands in the same interval on every request and every
replica, and a change of weights moves only the callers whose point changes interval.
Callers with none of the three (anonymous, no ``user``) are assigned per request.

The identity is hashed in memory and dropped: only the variant's name, a declared
bounded label, reaches metrics, audit lines and headers. The hash is keyed by the
policy name, so one caller's arms in two policies are independent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from kascade.gateway.tenants import access

_SCALE = float(1 << 64)


class Weighted(Protocol):
    """A variant as assignment sees it."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> int: ...


def identity(
    *, body: Mapping[str, Any], headers: Mapping[str, str], caller: access.Caller
) -> str | None:
    """What keeps a caller in its variant, or None (assign per request)."""
    user = body.get("user")
    if isinstance(user, str) and user:
        return f"user\x00{user}"
    # A key the gateway does not check (no keys configured) still tells callers apart:
    # it only decides an arm, never access.
    key = access.presented_key(headers)
    if key is not None:
        return f"key\x00{key}"
    if caller.tenant is not None:
        return f"tenant\x00{caller.tenant.name}"
    return None


def bucket(*, policy: str, who: str) -> float:
    """The caller's stable point in [0, 1) for ``policy`` (a keyed, one-way hash)."""
    digest = hashlib.blake2b(who.encode(), digest_size=8, key=policy.encode()[:64]).digest()
    return int.from_bytes(digest, "big") / _SCALE


V = TypeVar("V", bound=Weighted)


def choose(variants: Sequence[V], *, point: float) -> V:
    """The variant whose share of [0, 1), in list order, holds ``point``."""
    total = sum(v.weight for v in variants)
    edge = 0
    for variant in variants:
        edge += variant.weight
        if point * total < edge:
            return variant
    return variants[-1]  # point is below 1, so only float rounding reaches here
