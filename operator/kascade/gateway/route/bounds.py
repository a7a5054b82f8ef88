"""Limits on request values that would otherwise fail deep inside the gateway.

Each breach is a 400 naming the parameter, never a 500: ``max_tokens`` above what
any model produces (and whose worst-case cost the ledger could not even hold), and
JSON nested deeper than any chat request needs (Python's parser would raise
``RecursionError`` long before memory runs out).
"""

from __future__ import annotations

from typing import Any

# No provider generates more than this per call today (the largest output limits are
# in the hundreds of thousands); it keeps every worst case far below the ledger's
# 2**53 nano-USD maximum at any sane price.
MAX_TOKENS = 1_000_000

# Chat requests nest a few levels (messages > content parts > image_url, tool schemas
# a little deeper); 64 leaves room for any JSON schema a tool definition needs.
MAX_DEPTH = 64


class TooDeep(ValueError):
    """The document nests deeper than MAX_DEPTH; ``path`` names where."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def check_depth(value: Any, *, limit: int = MAX_DEPTH) -> None:
    """Raises TooDeep naming the first path that nests deeper than ``limit``."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > limit:
            raise TooDeep(path or "<body>")
        if isinstance(node, dict):
            for key, child in node.items():
                if isinstance(child, dict | list):
                    stack.append((child, f"{path}.{key}" if path else str(key), depth + 1))
        elif isinstance(node, list):
            for i, child in enumerate(node):
                if isinstance(child, dict | list):
                    stack.append((child, f"{path}[{i}]", depth + 1))


def top_level_key(raw: bytes) -> str | None:
    """The top-level key whose value a byte offset scan finds nesting deepest.

    Used only after the parser gave up (RecursionError), to name the parameter.
    """
    depth = 0
    key: str | None = None
    in_string = escaped = False
    start = 0
    for i, byte in enumerate(raw):
        c = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
                if depth == 1 and raw[i + 1 : i + 2].strip() in (b":", b""):
                    key = raw[start:i].decode(errors="replace")
            continue
        if c == '"':
            in_string, start = True, i + 1
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return key
        elif c in "]}":
            depth -= 1
    return key
