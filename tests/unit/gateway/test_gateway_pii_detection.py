"""PII detection: checksums reject look-alikes; redaction replaces every finding."""

from __future__ import annotations

import random
import re

import pytest

from kascade.gateway import config
from kascade.gateway.privacy import redaction as privacy

ALL = config.PrivacyConfig(detectors=["email", "phone", "credit-card", "iban", "ip-address"])


def _redact(text: str, privacy_config: config.PrivacyConfig = ALL) -> tuple[str, dict[str, int]]:
    counts: dict[str, int] = {}
    return privacy.Scanner(privacy=privacy_config).redact_text(text, counts=counts), counts


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("mail ann@example.org now", "email"),
        ("call +1 (415) 555-2671 today", "phone"),
        ("call 020 7946 0958 today", "phone"),
        ("card 4111 1111 1111 1111 ok", "credit-card"),
        ("card 5500-0000-0000-0004 ok", "credit-card"),
        ("iban GB82 WEST 1234 5698 7654 32 ok", "iban"),
        ("iban DE89370400440532013000 ok", "iban"),
        ("host 10.0.12.7 down", "ip-address"),
        ("host 2001:db8::8a2e:370:7334 down", "ip-address"),
    ],
)
def test_detects(text: str, kind: str) -> None:
    redacted, counts = _redact(text)
    assert counts == {kind: 1}
    assert f"[REDACTED:{kind.upper()}]" in redacted


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "iban GB82 WEST 1234 5698 7654 33 fails mod-97",
        "version 1.2.3.4.5 and 999.1.1.1",
        "the meeting is on 2024-05-01 at 12:30",
        "order 12345 shipped",
        "ratio 3:4:5 is fine",
    ],
)
def test_ignores_look_alikes(text: str) -> None:
    redacted, counts = _redact(text)
    assert counts == {}
    assert redacted == text


def test_checksums() -> None:
    assert privacy.luhn_valid("4111111111111111")
    assert not privacy.luhn_valid("4111111111111112")
    assert privacy.iban_valid("GB82 WEST 1234 5698 7654 32")
    assert not privacy.iban_valid("GB82 WEST 1234 5698 7654 31")


def test_custom_patterns_and_content_parts() -> None:
    cfg = config.PrivacyConfig(
        detectors=["email"], customPatterns=[{"name": "emp", "regex": r"EMP-\d{5}"}]
    )
    scanner = privacy.Scanner(privacy=cfg)
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": [{"type": "text", "text": "I am EMP-12345, a@b.io"}]},
    ]
    result = scanner.scan(messages=messages)
    assert result.counts == {"emp": 1, "email": 1}
    assert result.redacted_messages is not None
    assert result.redacted_messages[1]["content"] == [
        {"type": "text", "text": "I am [REDACTED:EMP], [REDACTED:EMAIL]"}
    ]
    assert messages[1]["content"][0]["text"] == "I am EMP-12345, a@b.io"  # original untouched


def test_invalid_custom_regex_is_a_config_error() -> None:
    cfg = config.PrivacyConfig(customPatterns=[{"name": "bad", "regex": "("}])
    with pytest.raises(config.ConfigError, match=r"customPatterns\[bad\]"):
        privacy.Scanner(privacy=cfg)


def test_no_detectors_means_disabled() -> None:
    scanner = privacy.Scanner(privacy=config.PrivacyConfig())
    assert not scanner.enabled
    assert not scanner.scan(messages=[{"role": "user", "content": "a@b.io"}]).found


def _reference_find(text: str) -> list[tuple[str, int, int]]:
    """Every built-in detector over the whole text, merged like the scanner does."""
    order = [("email", "email"), ("iban", "iban"), ("credit-card", "credit-card"),
             ("ip-address", "ipv4"), ("ip-address", "ipv6"), ("phone", "phone")]  # fmt: skip
    found = []
    for priority, (kind, name) in enumerate(order):
        check = privacy._VALIDATORS.get(name)
        for m in re.finditer(privacy._BUILTIN[name], text):
            if m.end() == m.start():
                continue
            ok = check is None or check(m.group())
            if ok or kind in ("iban", "credit-card"):
                found.append((m.start(), priority, m.end(), kind if ok else None))
    found.sort()
    out, pos = [], 0
    for start, _, end, kind in found:
        if start >= pos:
            if kind is not None:
                out.append((kind, start, end))
            pos = end
    return out


def test_run_windows_find_exactly_what_whole_text_scans_find() -> None:
    # The scanner only scans runs of digits/separators for cards, phones and IPv4;
    # on random texts full of near-misses it must agree with scanning everything.
    rng = random.Random(7)
    pieces = ["4111 1111 1111 1111", "4111-1111-1111-1112", "+1 (415) 555-2671", "555.1234",
              "10.0.0.1", "300.1.1.1", "1.2.3.4.5", "2024-05-01", "(020) 7946 0958", "a@b.io",
              "GB82 WEST 1234 5698 7654 32", "12:30:45", "fe80::1", "x9", "-", "(", ")", "+",
              ".", " ", "word", "7", "12345678901234567890", "abc123def"]  # fmt: skip
    scanner = privacy.Scanner(privacy=ALL)
    for _ in range(500):
        text = "".join(
            rng.choice(pieces) + rng.choice(["", " ", "  ", "-", "."]) for _ in range(12)
        )
        got = [(f.kind, f.start, f.end) for f in scanner.find(text)]
        assert got == _reference_find(text), text
