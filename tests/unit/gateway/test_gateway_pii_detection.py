"""PII detection: checksums reject look-alikes; redaction replaces every finding."""

from __future__ import annotations

import pytest

from kascade.gateway import config
from kascade.gateway.privacy import checksums, detectors, engine
from kascade.gateway.privacy import redaction as privacy

ALL = config.PrivacyConfig(detectors=list(detectors.KINDS))


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
        # The misses the issue lists.
        ("mail jöhn@exämple.de now", "email"),
        ("mail 用户@例子.广告 now", "email"),
        ("iban de89 3704 0044 0532 0130 00 ok", "iban"),
        ("iban DE89-3704-0044-0532-0130-00 ok", "iban"),
        ("iban gb82west12345698765432 ok", "iban"),
        ("card 4111.1111.1111.1111 ok", "credit-card"),
        ("card 4111/1111/1111/1111 ok", "credit-card"),
        ("card 3782 822463 10005 ok", "credit-card"),
        ("card 4111 1111 1111 1111 12/27 ok", "credit-card"),
        ("ssn 078-05-1121 ok", "ssn"),
        ("my SSN is 536225555 ok", "ssn"),
        ("born on 12 March 1985 in Leeds", "date-of-birth"),
        ("DOB: 1985-03-12.", "date-of-birth"),
        ("Geburtsdatum 03.12.1985 ok", "date-of-birth"),
        ("fecha de nacimiento: 12 de marzo de 1985", "date-of-birth"),
        # National identity numbers of ten countries, checked by their check digits.
        ("DNI 12345678Z ok", "national-id"),
        ("NIE X1234567L ok", "national-id"),
        ("codice fiscale RSSMRA85T10A562S ok", "national-id"),
        ("NIR 1 85 05 78 006 084 91 ok", "national-id"),
        ("CPF 390.533.447-05 ok", "national-id"),
        ("my BSN is 111222333 ok", "national-id"),
        ("PESEL 44051401359 ok", "national-id"),
        ("personnummer 811218-9876 ok", "national-id"),
        ("Aadhaar 2345 6789 0124 ok", "national-id"),
        ("ID 11010519491231002X ok", "national-id"),
        ("Steuer-ID 86 095 742 719 ok", "national-id"),
        ("passport no. N81241586 ok", "national-id"),
        # Secrets.
        ("key sk-proj-4bX9aQ2LmZt7RkV1sWn8PqY3 ok", "secret"),
        ("key sk-ant-api03-abcdefghijklmnopqrstuv ok", "secret"),
        ("AKIAIOSFODNN7EXAMPLE ok", "secret"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY ok", "secret"),
        (
            "token eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
            "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U ok",
            "secret",
        ),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY----- ok", "secret"),
        ("ghp_0123456789abcdefghijABCDEFGHIJ012345 ok", "secret"),
        # At the end of a sentence, a period does not continue the number.
        ("my SSN is 419-94-4949.", "ssn"),
        ("the host is 10.65.255.212.", "ip-address"),
        ("reach me at +86 199 6656 4620.", "phone"),
        # A 15-digit ID is not hidden by a card-shaped span that fails Luhn.
        ("NIR 209076444529509.", "national-id"),
        ("ID 340000200201200231 ok", "national-id"),
        # Area codes in parentheses, trunk 0 and a full national number.
        ("ring (0118)4960777 now", "phone"),
        ("x 01361678510 y", "phone"),
        ("x 091 15 0110 y", "ssn"),
        ("call +1-262-769-5835x90271 now", "phone"),
        ("desk 301-356-7216 ext. 112 ok", "phone"),
        # Unlabelled bare numbers that are valid: a national number, one with its
        # country code but no "+", a trunk 0 with unusual grouping.
        ("reach 3505378863 soon", "phone"),
        ("reach 4930123456789 soon", "phone"),
        ("reach 053-7213337 soon", "phone"),
        ("alcuno. 151 7866 7420. Ipsa", "phone"),  # "no." inside a word is no label
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
        # The false positives the issue lists, and more look-alikes.
        "order 1234567 shipped",
        "upgrade to version 1.2.3.4 today",
        "order 4111111111111112 and invoice 2024-000123",
        "price 1,234.56 EUR, total 12 345,00",
        "at 2024-05-01T12:30:45Z, unix 1714566645",
        "sha 3f786850e387550fdab836ed7e6dc881de23001b",
        "ssn 000-12-3456 and 666-12-3456 are never issued",
        "the 12 March 1985 release",
        "task-force meeting at 10:30",
        "MAC 00:1A:2B:3C:4D:5E",
        "call me maybe",
        "invoice 123456789 paid",
        "DNI 12345678A has a wrong letter",
        "a@b, c@ d.com, @home",
        "ref 4269 3109 5117 9029 (no 12-digit ID inside a longer number)",
        "690 125 267 bytes",
        "ticket 051-1435",
        "1975-06-11 20:56:01",
        "2015-02-12T07:09:02.293083",
        "il est nécessaire. python 2.7.18",
        "upgrade the node to v10.0.0.1",
        "epoch_ms 1714566645123, EAN 4006381333931",
    ],
)
def test_ignores_look_alikes(text: str) -> None:
    redacted, counts = _redact(text)
    assert counts == {}
    assert redacted == text


def test_a_card_with_dots_loses_all_its_digits() -> None:
    redacted, _ = _redact("pay with 5500.0000.0000.0004 please")
    assert redacted == "pay with [REDACTED:CREDIT-CARD] please"


@pytest.mark.parametrize(
    "number",
    [
        "+1 415 555 2671",  # US
        "(415) 555-2671",  # US national
        "020 7946 0958",  # GB
        "030 12345678",  # DE
        "01 42 68 53 00",  # FR
        "912 34 56 78",  # ES
        "06 12345678",  # NL
        "(11) 91234-5678",  # BR
        "098765 43210",  # IN
        "03-1234-5678",  # JP
        "(02) 9374 4000",  # AU
        "512 345 678",  # PL
        "08-123 456 78",  # SE
        "+49 30 12345678",  # E.164 with spaces
        "+442079460958",  # E.164
        "0044 20 7946 0958",  # international with 00
    ],
)
def test_phone_numbers_of_many_countries(number: str) -> None:
    redacted, counts = _redact(f"call {number} today")
    assert counts == {"phone": 1}, redacted
    assert redacted == "call [REDACTED:PHONE] today"


def test_checksums() -> None:
    assert privacy.luhn_valid("4111111111111111")
    assert not privacy.luhn_valid("4111111111111112")
    assert privacy.iban_valid("GB82 WEST 1234 5698 7654 32")
    assert not privacy.iban_valid("GB82 WEST 1234 5698 7654 31")


def test_only_enabled_detectors_run() -> None:
    scanner = privacy.Scanner(privacy=config.PrivacyConfig(detectors=["email"]))
    counts: dict[str, int] = {}
    text = "a@b.io 4111 1111 1111 1111 sk-proj-4bX9aQ2LmZt7RkV1sWn8PqY3"
    assert scanner.redact_text(text, counts=counts).startswith("[REDACTED:EMAIL] 4111")
    assert counts == {"email": 1}


def test_findings_use_character_offsets() -> None:
    text = "é ü jöhn@exämple.de"
    (finding,) = privacy.Scanner(privacy=ALL).find(text)
    assert text[finding.start : finding.end] == "jöhn@exämple.de"


def test_overlapping_findings_merge_so_no_byte_leaks() -> None:
    # A custom pattern that overlaps a built-in finding: the union is redacted.
    cfg = config.PrivacyConfig(
        detectors=["email"], customPatterns=[{"name": "acct", "regex": r"example\.com/\d+"}]
    )
    redacted, counts = _redact("see ann@example.com/12345 now", cfg)
    assert redacted == "see [REDACTED:EMAIL] now"
    assert counts == {"email": 1}


def test_custom_patterns_run_on_re2() -> None:
    cfg = config.PrivacyConfig(customPatterns=[{"name": "emp", "regex": r"EMP-\d{5}"}])
    assert _redact("I am EMP-12345", cfg) == ("I am [REDACTED:EMP]", {"emp": 1})


@pytest.mark.parametrize("regex", ["(", r"(?<=x)y", r"(a)\1", r"a(?=b)"])
def test_custom_patterns_re2_cannot_run_are_config_errors(regex: str) -> None:
    cfg = config.PrivacyConfig(customPatterns=[{"name": "bad", "regex": regex}])
    with pytest.raises(config.ConfigError, match=r"customPatterns\[bad\].*RE2"):
        privacy.Scanner(privacy=cfg)


def test_no_detectors_means_disabled() -> None:
    assert not privacy.Scanner(privacy=config.PrivacyConfig()).enabled


def test_catastrophic_patterns_finish_on_a_mebibyte() -> None:
    # Under a backtracking engine these take longer than the test suite's timeout
    # (`(a+)+$` is exponential, the old email pattern quadratic on this input); RE2 reads
    # each byte a bounded number of times.
    data = b"@ " + b"a" * (1 << 20) + b"!"
    assert engine.compile_bytes(rb"(a+)+$").search(data) is None
    scanner = privacy.Scanner(privacy=ALL)
    assert scanner.find_bytes(data) == []
    cfg = config.PrivacyConfig(customPatterns=[{"name": "evil", "regex": r"(a|aa)+b"}])
    assert privacy.Scanner(privacy=cfg).find_bytes(data) == []


def test_past_the_budget_phone_shapes_are_redacted_unchecked() -> None:
    # A text built to make the number-plan check expensive gets over-redacted, never
    # leaks: past the budget, phone-shaped candidates count without the check.
    text = "call 000 0000 000 today"  # no country's valid number
    assert _redact(text) == (text, {})
    with checksums.phone_budget(limit=0):
        assert _redact(text) == ("call [REDACTED:PHONE] today", {"phone": 1})
