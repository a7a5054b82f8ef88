"""API keys of tenants: read from mounted Secrets, held only as SHA-256 digests.

A key is looked up by comparing its digest with every known digest in constant time
(no early exit), so response timing tells nothing about which keys exist. Keys are
re-read every second: a key added to a Secret works, and a deleted one stops working,
within about a second of the kubelet updating the mounted files (up to its sync period).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kascade.gateway import config as config_mod

log = logging.getLogger("kascade.gateway")

POLL_SECONDS = 1.0
LEGACY_TENANT = ""
"""The owner of keys from the flat `auth` key list: authenticated, no tenant."""


def digest(key: str) -> bytes:
    """The SHA-256 digest a key is stored and compared as."""
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class KeyRing:
    """Digests of accepted keys and the tenant each belongs to."""

    entries: tuple[tuple[bytes, str], ...] = ()

    def lookup(self, key: str) -> str | None:
        """The tenant owning ``key`` (``LEGACY_TENANT`` for flat keys), or None."""
        wanted = digest(key)
        found: str | None = None
        for known, tenant in self.entries:
            # Every entry is compared: the time taken does not depend on where it matched.
            if hmac.compare_digest(known, wanted):
                found = tenant
        return found

    def counts(self) -> dict[str, int]:
        """Number of keys per tenant (for logs and status; never the keys)."""
        out: dict[str, int] = {}
        for _, tenant in self.entries:
            out[tenant] = out.get(tenant, 0) + 1
        return out


def _read_dir(path: str) -> list[str]:
    # A mounted Secret holds one file per key plus kubelet's `..data` links: skip dot files.
    try:
        names = sorted(n for n in os.listdir(path) if not n.startswith("."))
    except OSError as exc:
        log.warning("Cannot read tenant keys dir=%s error=%s", path, exc.strerror)
        return []
    keys = []
    for name in names:
        file = Path(path) / name
        try:
            if file.is_file():
                keys.append(file.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            log.warning("Cannot read tenant key file=%s", file)
    return keys


def read_keys(source: config_mod.TenantKeys) -> list[str]:
    """The non-empty keys of one tenant, as they are now."""
    if source.env is not None:
        raw = os.environ.get(source.env, "").split(",")
    else:
        assert source.dir is not None
        raw = _read_dir(source.dir)
    return [k.strip() for k in raw if k.strip()]


def _legacy_keys(auth: config_mod.AuthConfig) -> list[str]:
    if auth.api_keys_env is not None:
        return [k.strip() for k in os.environ.get(auth.api_keys_env, "").split(",") if k.strip()]
    assert auth.api_keys_file is not None
    try:
        text = Path(auth.api_keys_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise config_mod.ConfigError(
            f"auth.apiKeysFile: cannot read {auth.api_keys_file}: {exc.strerror}"
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def build_ring(
    *,
    tenants: Mapping[str, config_mod.TenantConfig],
    auth: config_mod.AuthConfig | None,
    reader: Callable[[config_mod.TenantKeys], Iterable[str]] = read_keys,
) -> KeyRing:
    """Reads every key source; a key claimed by two tenants is refused for both."""
    owners: dict[bytes, set[str]] = {}
    for name, tenant in sorted(tenants.items()):
        for key in reader(tenant.keys):
            owners.setdefault(digest(key), set()).add(name)
    if auth is not None:
        legacy = _legacy_keys(auth)
        if not legacy and not tenants:
            raise config_mod.ConfigError(
                "auth: no API keys found (one key per line in apiKeysFile, comma separated "
                "in apiKeysEnv); remove `auth` to disable authentication"
            )
        for key in legacy:
            owners.setdefault(digest(key), set()).add(LEGACY_TENANT)
    entries = []
    for known, names in owners.items():
        if len(names) > 1:
            log.error(
                "Refused an API key held by several tenants=%s: give each tenant its own keys",
                ",".join(sorted(names)),
            )
            continue
        entries.append((known, next(iter(names))))
    return KeyRing(entries=tuple(sorted(entries)))


class KeyWatcher:
    """Re-reads the key sources of the live config every ``POLL_SECONDS``."""

    def __init__(
        self,
        *,
        current: Callable[[], tuple[config_mod.GatewayConfig, KeyRing]],
        swap: Callable[[KeyRing], None],
    ) -> None:
        self._current = current
        self._swap = swap

    def check(self) -> bool:
        """Swaps the ring if the keys changed; True when it did."""
        config, ring = self._current()
        try:
            new = build_ring(tenants=config.tenants, auth=config.auth)
        except config_mod.ConfigError as exc:
            log.error("Kept the previous API keys: %s", exc)
            return False
        if new == ring:
            return False
        self._swap(new)
        counts = ",".join(f"{t or '(auth)'}={n}" for t, n in sorted(new.counts().items()))
        log.info("Reloaded API keys keys_per_tenant=%s", counts or "none")
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                self.check()
            except Exception:  # A bug here must not stop key rotation for good.
                log.exception("Failed to re-read API keys")
