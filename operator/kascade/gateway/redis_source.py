"""Where the gateway's Redis URL and key prefix come from.

The URL can be given inline (no password: it lands in a ConfigMap) or as files of a
mounted Secret (`urlFile`, `passwordFile`), read once at start. Keys carry the
namespace, so gateways of two namespaces sharing one Redis never share a budget.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from kascade.gateway import config as config_mod


def _read(path: str, *, field: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise config_mod.ConfigError(
            f"ledger.{field}: cannot read {path}: {exc.strerror}"
        ) from None


def ledger_url(ledger: config_mod.LedgerConfig) -> str | None:
    """The ledger URL with its password filled in from ``passwordFile`` if given."""
    url = ledger.url
    if url is None and ledger.url_file is not None:
        url = _read(ledger.url_file, field="urlFile")
    if url is None or ledger.password_file is None or not Path(ledger.password_file).exists():
        return url  # The password is optional: a Redis without AUTH needs none.
    password = urllib.parse.quote(_read(ledger.password_file, field="passwordFile"), safe="")
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("redis"):
        raise config_mod.ConfigError(
            "ledger.passwordFile: needs a redis:// or rediss:// URL to add the password to"
        )
    rest = rest.rsplit("@", 1)[-1]
    return f"{scheme}://:{password}@{rest}"


def key_prefix(namespace: str) -> str:
    """``kascade:<namespace>:``, the prefix of every Redis key of one gateway."""
    return f"kascade:{namespace}:"
