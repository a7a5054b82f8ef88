"""One JSON line per request with the decision rationale; never prompt text."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any


class AuditLog:
    """Appends JSON lines to a file or stdout (`-`); None disables the log."""

    def __init__(self, *, path: str | None) -> None:
        self._stream: IO[str] | None
        self._owned = False
        if path is None:
            self._stream = None
        elif path == "-":
            self._stream = sys.stdout
        else:
            self._stream = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._owned = True

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def write(self, record: dict[str, Any]) -> None:
        """Writes one line; records hold decisions, counts and ids, never message text."""
        if self._stream is None:
            return
        record.setdefault("ts", round(time.time(), 3))
        self._stream.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")

    def close(self) -> None:
        if self._owned and self._stream is not None:
            self._stream.close()
        self._stream = None
