"""Finding and redacting personal data in one text, with a policy's compiled detectors.

Each detector is one RE2 pass over the text's UTF-8 bytes (skipped when its cheap gate
fails: no `@`, no email scan) and a check per candidate (see `detectors`). The passes
are linear in the text and every check reads a bounded number of bytes, so a text of n
bytes costs O(n) whatever it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from kascade.gateway import config as config_mod
from kascade.gateway.privacy import checksums, engine
from kascade.gateway.privacy import detectors as detectors_mod

# Kept for callers that checked numbers directly.
luhn_valid = checksums.luhn_valid
iban_valid = checksums.iban_valid
_DIGITS = b"0123456789"


@dataclass(frozen=True)
class Finding:
    """One detected piece of personal data (its kind and span; never logged raw)."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class _Compiled:
    detector: detectors_mod.Detector
    regex: engine.Pattern


def _custom(pattern: config_mod.CustomPattern) -> _Compiled:
    try:
        regex = engine.compile_bytes(pattern.regex)
    except engine.PatternError as exc:
        raise config_mod.ConfigError(
            f"privacy.customPatterns[{pattern.name}].regex: the RE2 engine (linear time) "
            f"cannot compile it: {exc}; lookaround and backreferences are not supported"
        ) from None
    return _Compiled(detectors_mod.Detector(kind=pattern.name, pattern=b"", builtin=False), regex)


class Scanner:
    """A policy's compiled detectors; `find()` and `redact_text()` work on one text."""

    def __init__(self, *, privacy: config_mod.PrivacyConfig) -> None:
        self.privacy = privacy
        self.action = privacy.action
        enabled = set(privacy.detectors)
        self._compiled = [
            _Compiled(d, engine.compile_bytes(d.pattern, case_sensitive=d.case_sensitive))
            for d in detectors_mod.BUILTIN
            if d.kind in enabled
        ]
        # One pass of all built-in patterns as one alternation answers "could any of
        # them match here?": most texts hold no candidate at all, and then the scan
        # costs this one pass instead of one per detector.
        patterns = [c.detector.pattern for c in self._compiled]
        self._any = (
            engine.compile_bytes(b"|".join(b"(?:" + p + b")" for p in patterns))
            if patterns
            else None
        )
        self._compiled.extend(_custom(p) for p in privacy.custom_patterns)

    @property
    def enabled(self) -> bool:
        return bool(self._compiled)

    def find_bytes(self, data: bytes) -> list[Finding]:
        """Validated findings (byte offsets), left to right, non-overlapping."""
        # (start, priority, end, kind or None for a blocked span, yields to blocks)
        found: list[tuple[int, int, int, str | None, bool]] = []
        digits = len(data) - len(data.translate(None, _DIGITS))
        # Keys and role names ("content", "tool_call_id"): no built-in detector can match.
        plain = len(data) < 20 and data.replace(b"_", b"").isalpha()
        gates_seen: dict[engine.Pattern, bool] = {}
        none_builtin = plain or self._any is None or not engine.found(self._any, data)
        for priority, compiled in enumerate(self._compiled):
            d = compiled.detector
            if d.builtin and (none_builtin or digits < d.min_digits):
                continue
            if d.gates and not any(gate in data for gate in d.gates):
                continue
            if d.context_gate is not None:
                if d.context_gate not in gates_seen:
                    gates_seen[d.context_gate] = engine.found(d.context_gate, data)
                if not gates_seen[d.context_gate]:
                    continue
            for start, end in engine.spans(compiled.regex, data):
                span = (start, end) if d.check is None else d.check(data, start, end)
                if span is not None:
                    found.append((span[0], priority, span[1], d.kind, d.yield_to_blocks))
                elif d.blocker is not None:
                    blocked = d.blocker(data, start, end)
                    if blocked is not None:
                        found.append((blocked[0], priority, blocked[1], None, False))
        return _resolve(found) if found else []

    def find(self, text: str) -> list[Finding]:
        """Findings in a text, with character offsets."""
        data = engine.encode(text)
        findings = self.find_bytes(data)
        if not findings or len(data) == len(text):
            return findings
        return [
            Finding(
                kind=f.kind,
                start=len(engine.decode(data[: f.start])),
                end=len(engine.decode(data[: f.end])),
            )
            for f in findings
        ]

    def redact_text(self, text: str, *, counts: dict[str, int], context: str = "") -> str:
        """Replaces each finding by `[REDACTED:KIND]` and counts it. `context` is read
        for context words but never redacted: a JSON key ("phone") says what its bare
        digits are."""
        prefix = engine.encode(context + ": ") if context else b""
        data = prefix + engine.encode(text)
        findings = [f for f in self.find_bytes(data) if f.end > len(prefix)]
        if not findings:
            return text
        out: list[bytes] = []
        pos = len(prefix)
        for f in findings:
            out.append(data[pos : max(pos, f.start)])
            out.append(f"[REDACTED:{f.kind.upper()}]".encode())
            pos = f.end
            counts[f.kind] = counts.get(f.kind, 0) + 1
        out.append(data[pos:])
        return engine.decode(b"".join(out))


def _resolve(found: list[tuple[int, int, int, str | None, bool]]) -> list[Finding]:
    """Earlier start wins, then the detector listed first. Overlapping findings merge
    into one (so no byte of either leaks); a phone-like finding that lies wholly inside
    a blocked span (digits of a card number that failed Luhn) is dropped."""
    found.sort(key=lambda f: (f[0], f[1], f[2]))
    out: list[Finding] = []
    blocked_until = -1
    for start, _, end, kind, yields in found:
        if kind is None:
            blocked_until = max(blocked_until, end)
            continue
        if yields and end <= blocked_until:
            continue
        if out and start < out[-1].end:
            if end > out[-1].end:
                out[-1] = Finding(kind=out[-1].kind, start=out[-1].start, end=end)
            continue
        out.append(Finding(kind=kind, start=start, end=end))
    return out
