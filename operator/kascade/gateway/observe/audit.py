"""One JSON line per request with the decision rationale; never prompt text."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import IO, Any

# Lines are buffered and written at most this long after they were produced: one write
# per request was a measurable share of the gateway's CPU under load.
FLUSH_SECONDS = 0.2
_MAX_BUFFERED = 512


class AuditLog:
    """Appends JSON lines to a file or stdout (`-`); None disables the log."""

    def __init__(self, *, path: str | None) -> None:
        self._stream: IO[str] | None
        self._owned = False
        self._buffer: list[str] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        if path is None:
            self._stream = None
        elif path == "-":
            self._stream = sys.stdout
        else:
            self._stream = open(path, "a", encoding="utf-8")  # noqa: SIM115  (held for the process; close() ends it)
            self._owned = True

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def write(self, record: dict[str, Any]) -> None:
        """Queues one line; records hold decisions, counts and ids, never message text."""
        if self._stream is None:
            return
        record.setdefault("ts", round(time.time(), 3))
        self._buffer.append(json.dumps(record, separators=(",", ":"), default=str))
        if len(self._buffer) >= _MAX_BUFFERED:
            self.flush()
        elif self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # Outside an event loop (tools, tests): write now.
                self.flush()
                return
            self._flush_handle = loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Writes the queued lines."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._stream is None or not self._buffer:
            return
        lines, self._buffer = self._buffer, []
        self._stream.write("\n".join(lines) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self.flush()
        if self._owned and self._stream is not None:
            self._stream.close()
        self._stream = None
