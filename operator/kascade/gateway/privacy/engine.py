"""The regular-expression engine every privacy pattern runs on: RE2, linear in the text.

Python's `re` backtracks: the old email pattern took 12 s on `"@ " + "a" * 80_000`, on
the event loop. RE2 (the `google-re2` wheel) compiles patterns to automata that read
each byte a bounded number of times, whatever the pattern, so neither a built-in
detector nor a policy's custom pattern can take super-linear time. It refuses what it
cannot run in linear time (backreferences, lookaround): the gateway reports such a
custom pattern as a config error instead of running it.

Patterns are compiled for bytes: the scanner encodes a text once and every detector
reads the same buffer (the `str` API would re-encode the whole text on every call).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import re2

Pattern = Any
"""A compiled RE2 pattern over UTF-8 bytes (the `re2` wheel ships no type hints)."""

# A pattern's automaton may use this much memory; RE2 falls back to a slower, still
# linear, matcher when the DFA cache fills.
_MAX_MEM = 8 << 20


# The wheel's compiled objects, when this version exposes them (see `spans`).
_UNANCHORED = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)


class PatternError(ValueError):
    """A pattern RE2 cannot compile (its message names what is unsupported)."""


def _options(*, case_sensitive: bool) -> Any:
    options = re2.Options()
    options.max_mem = _MAX_MEM
    options.case_sensitive = case_sensitive
    options.log_errors = False
    return options


def compile_bytes(pattern: str | bytes, *, case_sensitive: bool = True) -> Pattern:
    """Compiles for UTF-8 bytes; raises PatternError when RE2 cannot run the pattern."""
    raw = pattern.encode() if isinstance(pattern, str) else pattern
    try:
        return re2.compile(raw, _options(case_sensitive=case_sensitive))
    except re2.error as exc:
        raise PatternError(str(exc) or "not supported by RE2") from None


def spans(pattern: Pattern, data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each non-empty, non-overlapping match, left to right.

    Calls the compiled RE2 object directly when the wheel exposes it: the public
    `finditer` builds a match object per hit, which doubled the cost of a scan."""
    regexp = getattr(pattern, "_regexp", None)
    if regexp is None or _UNANCHORED is None:
        for match in pattern.finditer(data):
            if match.end() > match.start():
                yield match.span()
        return
    pos, end = 0, len(data)
    while pos <= end:
        (start, stop), *_ = regexp.Match(_UNANCHORED, data, pos, end)
        if start < 0:
            return
        if stop > start:
            yield start, stop
            pos = stop
        else:
            pos = stop + 1


def found(pattern: Pattern, data: bytes) -> bool:
    """Whether the pattern matches anywhere in `data`."""
    regexp = getattr(pattern, "_regexp", None)
    if regexp is None or _UNANCHORED is None:
        return pattern.search(data) is not None
    return bool(regexp.Match(_UNANCHORED, data, 0, len(data))[0][0] >= 0)


def encode(text: str) -> bytes:
    """UTF-8 bytes of a text; lone surrogates (valid in JSON strings) pass through."""
    return text.encode("utf-8", "surrogatepass")


def decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")
