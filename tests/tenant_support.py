"""Helpers for tenant tests: Secret-like key directories that rotate the way the kubelet
updates a mounted Secret, and tenant configs."""

from __future__ import annotations

import itertools
import os
import secrets
from pathlib import Path
from typing import Any

_versions = itertools.count(1)


def new_key(tenant: str) -> str:
    """A fresh high-entropy key, prefixed so leak checks can find any of them."""
    return f"ksk-{tenant}-{secrets.token_urlsafe(24)}"


def write_secret_dir(path: Path, files: dict[str, str]) -> None:
    """(Re)writes ``path`` like the kubelet's atomic writer: a versioned directory,
    the ``..data`` link swapped by rename, and one link per key into ``..data``."""
    path.mkdir(parents=True, exist_ok=True)
    version = path / f"..v{next(_versions)}"
    version.mkdir()
    for name, value in files.items():
        (version / name).write_text(value)
    tmp = path / "..data_tmp"
    os.symlink(version.name, tmp)
    os.replace(tmp, path / "..data")
    for entry in os.listdir(path):
        if not entry.startswith(".") and entry not in files:
            os.unlink(path / entry)
    for name in files:
        link = path / name
        if not link.is_symlink():
            os.symlink(f"..data/{name}", link)


def tenant(keys_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"keys": {"dir": str(keys_dir)}, **extra}
