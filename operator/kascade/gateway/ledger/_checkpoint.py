"""Atomic checkpoint files: write a temporary file, fsync it, rename it over the old one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from kascade.gateway.ledger import _errors

FORMAT_VERSION = 1


def encode(payload: dict[str, Any]) -> bytes:
    """The checkpoint file's bytes for ``payload``.

    Called on the event loop, so the live state is not mutated while it is read;
    only the bytes go to the writer thread.
    """
    return json.dumps({"version": FORMAT_VERSION, **payload}, separators=(",", ":")).encode()


def write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that a reader sees the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read(path: Path) -> dict[str, Any] | None:
    """Reads a checkpoint; ``None`` if there is none. A corrupt file raises ``LedgerError``.

    Starting with zero spend after failing to read a checkpoint would silently
    reopen budgets, so a damaged file stops the ledger instead.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise _errors.LedgerError(
            f"ledger checkpoint {path} is not valid JSON ({exc}); fix or remove it "
            "(removing it forgets the recorded spend)"
        ) from None
    if not isinstance(payload, dict) or payload.get("version") != FORMAT_VERSION:
        raise _errors.LedgerError(
            f"ledger checkpoint {path} has an unknown format (expected version {FORMAT_VERSION})"
        )
    return payload
