"""Personal-data detection and redaction, compiled once per policy at config load.

One alternation regex finds candidates in a single pass; checksums (Luhn for cards,
mod-97 for IBANs, `ipaddress` for IPv6) reject look-alikes so that order numbers and
timestamps are not redacted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from kascade.gateway import config as config_mod

_BUILTIN: dict[str, str] = {
    # Order matters: earlier alternatives win at the same position.
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "iban": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
    "credit-card": r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])",
    "ip-address": (
        r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
        r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.])"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"
    ),
    "phone": r"(?<![\w+])\+?(?:\(\d{1,4}\)[ .-]?)?\d(?:[ .-]?\(?\d\)?){6,14}(?!\w)",
}


def luhn_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum used by payment cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """True when the IBAN passes the ISO 13616 mod-97 check."""
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


def _card_ok(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _ip_ok(text: str) -> bool:
    if "." in text:
        return True  # The IPv4 alternative already bounds every octet.
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}")


def _phone_ok(text: str) -> bool:
    digits = sum(ch.isdigit() for ch in text)
    # Dates have phone-like digit counts; they are not personal data on their own.
    return 7 <= digits <= 15 and _DATE.fullmatch(text) is None


_VALIDATORS: dict[str, Callable[[str], bool]] = {
    "iban": iban_valid,
    "credit-card": _card_ok,
    "ip-address": _ip_ok,
    "phone": _phone_ok,
}


@dataclass(frozen=True)
class Finding:
    """One detected piece of personal data (its kind and span; never logged raw)."""

    kind: str
    start: int
    end: int


@dataclass
class ScanResult:
    """Findings across a request's messages and the redacted messages, if any."""

    counts: dict[str, int] = field(default_factory=dict)
    redacted_messages: list[dict[str, object]] | None = None

    @property
    def found(self) -> bool:
        return bool(self.counts)


class Scanner:
    """A policy's compiled detectors; `scan()` is called once per request."""

    def __init__(self, *, privacy: config_mod.PrivacyConfig) -> None:
        self.action = privacy.action
        parts: list[str] = []
        self._kinds: list[str] = []
        for name in ("email", "iban", "credit-card", "ip-address", "phone"):
            if name in privacy.detectors:
                parts.append(f"(?P<g{len(self._kinds)}>{_BUILTIN[name]})")
                self._kinds.append(name)
        for pattern in privacy.custom_patterns:
            try:
                re.compile(pattern.regex)
            except re.error as exc:
                raise config_mod.ConfigError(
                    f"privacy.customPatterns[{pattern.name}].regex: invalid regex: {exc}"
                ) from None
            parts.append(f"(?P<g{len(self._kinds)}>{pattern.regex})")
            self._kinds.append(pattern.name)
        self._regex = re.compile("|".join(parts)) if parts else None

    @property
    def enabled(self) -> bool:
        return self._regex is not None

    def find(self, text: str) -> list[Finding]:
        """Validated findings in one text, left to right, non-overlapping."""
        if self._regex is None:
            return []
        found: list[Finding] = []
        for match in self._regex.finditer(text):
            group = match.lastgroup
            if group is None:
                continue
            kind = self._kinds[int(group[1:])]
            check = _VALIDATORS.get(kind)
            if check is not None and not check(match.group()):
                continue
            found.append(Finding(kind=kind, start=match.start(), end=match.end()))
        return found

    def redact_text(self, text: str, *, counts: dict[str, int]) -> str:
        """Replaces each finding by `[REDACTED:KIND]` and counts it."""
        findings = self.find(text)
        if not findings:
            return text
        out: list[str] = []
        pos = 0
        for f in findings:
            out.append(text[pos : f.start])
            out.append(f"[REDACTED:{f.kind.upper()}]")
            pos = f.end
            counts[f.kind] = counts.get(f.kind, 0) + 1
        out.append(text[pos:])
        return "".join(out)

    def scan(self, *, messages: list[dict[str, object]]) -> ScanResult:
        """Scans every message's text; builds redacted copies only when something matched."""
        result = ScanResult()
        if self._regex is None:
            return result
        redacted: list[dict[str, object]] = []
        changed = False
        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                new_content: object = self.redact_text(content, counts=result.counts)
                changed = changed or new_content != content
            elif isinstance(content, list):
                parts: list[object] = []
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        text = self.redact_text(part["text"], counts=result.counts)
                        changed = changed or text != part["text"]
                        parts.append({**part, "text": text})
                    else:
                        parts.append(part)
                new_content = parts
            else:
                new_content = content
            redacted.append({**message, "content": new_content})
        if changed:
            result.redacted_messages = redacted
        return result
