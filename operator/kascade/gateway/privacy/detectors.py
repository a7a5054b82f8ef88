"""The built-in detectors: an RE2 pattern that finds candidates and a check that keeps
only personal data.

RE2 has no lookaround, so each pattern matches a candidate generously and its check
looks at the bytes around it (a card number must not continue into more digits) and at
a bounded window before it (a date is a date of birth only after words like "born").
Every check reads a bounded number of bytes per candidate, so a scan stays linear.

What the detectors cannot do: person names and postal addresses have no shape a pattern
can tell from ordinary words ("Paris Hilton", "10 Downing Street" versus "10 pages"),
so no built-in detector claims them; policies can add custom patterns for their own
formats (customer numbers, ticket ids), and requests whose names or addresses must
never leave the cluster need `local-only` with a detector that fires on them.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass

from kascade.gateway.privacy import checksums, engine

Span = tuple[int, int]
Check = Callable[[bytes, int, int], Span | None]
"""(buffer, candidate start, candidate end) -> the span that is personal data, or None."""

_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_DIGITS = frozenset(b"0123456789")
_WINDOW = 48
"""Bytes before a candidate searched for context words."""


@dataclass(frozen=True)
class Detector:
    kind: str
    """The config name (`email`, `credit-card`...): the redaction marker and audit key."""
    pattern: bytes
    check: Check | None = None
    gates: tuple[bytes, ...] = ()
    """Byte strings one of which every match contains: texts without any are skipped."""
    context_gate: engine.Pattern | None = None
    """Words the check demands near every finding: texts without them are skipped."""
    min_digits: int = 0
    """Digits every match holds: texts with fewer digits in all are skipped."""
    case_sensitive: bool = True
    blocker: Check | None = None
    """For a candidate that fails the check: the span whose digits detectors that
    `yield_to_blocks` must not claim (a card number that fails Luhn is no phone number)."""
    yield_to_blocks: bool = False
    builtin: bool = True
    """False for a policy's custom pattern (which may match anything, even "id")."""


def _is_word(byte: int) -> bool:
    return byte in _ALNUM or byte >= 0x80


def _clear(data: bytes, start: int, end: int, *, also: bytes = b"") -> bool:
    """The candidate does not continue: no word character next to it, and no `also`
    separator followed by one ("1.2.3.4.5" is no IP address; "1.2.3.4." ends a sentence)."""
    if start > 0:
        before = data[start - 1]
        if _is_word(before) or (before in also and start > 1 and _is_word(data[start - 2])):
            return False
    if end < len(data):
        after = data[end]
        if _is_word(after) or (after in also and end + 1 < len(data) and _is_word(data[end + 1])):
            return False
    return True


def _more_digits(data: bytes, start: int, end: int) -> bool:
    """The number goes on past a space ("4269 3109 5117 9029" holds no 12-digit ID)."""
    if start > 1 and data[start - 1] == 0x20 and data[start - 2] in _DIGITS:
        return True
    return end + 1 < len(data) and data[end] == 0x20 and data[end + 1] in _DIGITS


def _context(data: bytes, start: int, words: engine.Pattern) -> bool:
    return engine.found(words, data[max(0, start - _WINDOW) : start])


_NOT_DIGITS = bytes(b for b in range(256) if b not in _DIGITS)


def _digits(data: bytes, start: int, end: int) -> str:
    return data[start:end].translate(None, _NOT_DIGITS).decode()


def _groups(data: bytes, start: int, end: int) -> list[Span]:
    """The maximal digit groups inside a candidate, in order."""
    out: list[Span] = []
    i = start
    while i < end:
        if data[i] in _DIGITS:
            j = i
            while j < end and data[j] in _DIGITS:
                j += 1
            out.append((i, j))
            i = j
        else:
            i += 1
    return out


def _group_spans(data: bytes, start: int, end: int, low: int, high: int) -> list[Span]:
    """Sub-spans made of whole digit groups with low..high digits: earliest start first,
    then longest (a card followed by an expiry date, an order number before a card).
    Groups of one or two digits (dates, versions) start no span."""
    groups = _groups(data, start, end)[:24]
    spans: list[Span] = []
    for i in range(len(groups)):
        if groups[i][1] - groups[i][0] < 3:
            continue
        count = 0
        found: list[Span] = []
        for j in range(i, len(groups)):
            count += groups[j][1] - groups[j][0]
            if count > high:
                break
            if count >= low:
                found.append((groups[i][0], groups[j][1]))
        spans.extend(reversed(found))
    return spans


# --- email -------------------------------------------------------------------------

_LABEL = rb"[\p{L}\p{N}\p{M}\-]+"
EMAIL = Detector(
    kind="email",
    # Internationalised: letters of any script in the local part and the domain.
    pattern=rb"[\p{L}\p{N}\p{M}._%+\-]+@"
    + _LABEL
    + rb"(?:\."
    + _LABEL
    + rb")*\.(?:[\p{L}\p{M}]{2,}|xn--[a-zA-Z0-9\-]+)",
    gates=(b"@",),
)

# --- payment cards -----------------------------------------------------------------


def _card(data: bytes, start: int, end: int) -> Span | None:
    for s, e in _group_spans(data, start, end, 13, 19):
        if _clear(data, s, e) and checksums.card_valid(_digits(data, s, e)):
            return s, e
    return None


def _card_like(data: bytes, start: int, end: int) -> Span | None:
    """A span written like a card number (a network's first digit, 16 to 19 digits:
    shorter ones may be phone numbers with their country code, up to 15 digits)."""
    for s, e in _group_spans(data, start, end, 16, 19):
        if data[s] in b"23456" and _clear(data, s, e):
            return s, e
    return None


CARD = Detector(
    kind="credit-card",
    # Any separator style: spaces, dashes, dots, slashes, underscores, or none.
    pattern=rb"\d(?:[ ._/\-]{0,3}\d){12,30}",
    check=_card,
    min_digits=13,
    blocker=_card_like,
)

# --- IBAN --------------------------------------------------------------------------


def _iban_span(data: bytes, start: int, end: int) -> Span | None:
    """The span of the country's IBAN length from `start`, when it ends at a boundary."""
    if start > 0 and _is_word(data[start - 1]):
        return None
    length = checksums.iban_length(engine.decode(data[start : start + 2]))
    if length is None:
        return None
    seen, i = 0, start
    while i < end and seen < length:
        if data[i] not in b" -":
            seen += 1
        i += 1
    if seen < length or (i < len(data) and _is_word(data[i])):
        return None
    return start, i


def _iban(data: bytes, start: int, end: int) -> Span | None:
    span = _iban_span(data, start, end)
    if span is None:
        return None
    text = engine.decode(data[span[0] : span[1]]).replace(" ", "").replace("-", "")
    return span if checksums.iban_valid(text) else None


IBAN = Detector(
    kind="iban",
    # Any case and spacing: the country's IBAN length decides where it ends.
    pattern=rb"[A-Za-z]{2}\d{2}(?:[ \-]?[A-Za-z0-9]){11,30}",
    check=_iban,
    min_digits=2,
    blocker=_iban_span,
)

# --- US SSN ------------------------------------------------------------------------

_SSN_WORDS = engine.compile_bytes(
    rb"ssn|social security|sozialversicherung|\bss#", case_sensitive=False
)


def _ssn(data: bytes, start: int, end: int) -> Span | None:
    if not _clear(data, start, end, also=b"-./"):
        return None
    text = engine.decode(data[start:end])
    if text.isdigit() and not _context(data, start, _SSN_WORDS):
        return None  # nine bare digits are an SSN only where the text says so
    return (start, end) if checksums.ssn_valid(text) else None


SSN = Detector(
    kind="ssn",
    pattern=rb"\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4}|\d{9}",
    check=_ssn,
    min_digits=9,
)

# --- IP addresses ------------------------------------------------------------------

# Right before the number: "version 1.2.3.4", "v1.2.3.4", "release: 10.0.0.1".
_VERSION_WORDS = engine.compile_bytes(
    rb"(?:version|\bver\.?|release|build|firmware|\bv|python|node|java)\s*[:=]?\s*$",
    case_sensitive=False,
)


def _ipv4(data: bytes, start: int, end: int) -> Span | None:
    if not _clear(data, start, end, also=b".-"):
        return None
    octets = data[start:end].split(b".")
    if any(int(o) > 255 or (len(o) > 1 and o[0] == 0x30) for o in octets):
        return None
    if _context(data, start, _VERSION_WORDS):
        return None  # "version 1.2.3.4" is a version number
    return start, end


IPV4 = Detector(
    kind="ip-address",
    pattern=rb"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}",
    check=_ipv4,
    min_digits=4,
)


def _ipv6(data: bytes, start: int, end: int) -> Span | None:
    if not _clear(data, start, end, also=b":"):
        return None
    text = engine.decode(data[start:end])
    if sum(1 for part in text.split(":") if part) < 3:
        return None  # "::1" and "a:b::" carry nothing personal
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return None
    return start, end


IPV6 = Detector(
    kind="ip-address",
    pattern=rb"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}",
    check=_ipv6,
    gates=(b":",),
)

# --- phone numbers -----------------------------------------------------------------

_PHONE_WORDS = engine.compile_bytes(
    rb"phone|\btel\b|\btel\.|mobile|\bcell|\bcall|\bfax|whatsapp|\bsms|\btext me|\bring|"
    rb"telefon|handy|t\x{e9}l\x{e9}phone|portable|tel\x{e9}fono|m\x{f3}vil|cellulare|telefoon|"
    rb"\x{7535}\x{8bdd}|\x{96fb}\x{8a71}|\x{643a}\x{5e2f}",
    case_sensitive=False,
)
# A date (maybe followed by a time): "2024-05-01", "1975-06-11 20:56".
_DATE_SHAPE = engine.compile_bytes(
    rb"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4})(?:$|[ T])"
)
# Right before a number: it is a reference, not a phone number.
_NOT_PHONE_BEFORE = engine.compile_bytes(
    # Labels only: common words ("this time", "in case") would veto real numbers.
    rb"(?:\b(?:order|invoice|ticket|ref|sku|id|no\.|nr\.?|build|port|isbn|tracking|version|"
    rb"ts|epoch|epoch_ms|timestamp|unix|ean|gtin|upc|serial|batch)|#)\s*[:#=]?\s*$",
    case_sensitive=False,
)
# Right after it: a quantity ("690 125 267 bytes"), not a phone number.
_NOT_PHONE_AFTER = engine.compile_bytes(
    rb"^\s?(?:bytes?|[kmgt]i?b\b|km\b|kg\b|m\b|users|rows|items|records|times|views|"
    rb"eur|usd|gbp|\x{20ac}|\$|%|x\b)",
    case_sensitive=False,
)


def _phone_ok(data: bytes, s: int, e: int, *, context: bool) -> bool:
    digits = _digits(data, s, e)
    if not 7 <= len(digits) <= 15 or engine.found(_DATE_SHAPE, data[s:e]):
        return False
    text = engine.decode(data[s:e])
    if text.startswith(("+", "00")):
        return checksums.phone_valid(
            "+" + text.lstrip("+0") if text.startswith("00") else text, international=True
        )
    # Named as a reference, a timestamp or a quantity: not a phone number.
    if engine.found(_NOT_PHONE_BEFORE, data[max(0, s - 16) : s]):
        return False
    if engine.found(_NOT_PHONE_AFTER, data[e : e + 8]):
        return False
    if context:  # also a country code written without its "+"
        return checksums.phone_valid(text, international=False) or (
            checksums.with_country_code_valid(digits)
        )
    # Without the word "phone" nearby: only numbers written the way their country
    # writes phone numbers (bare digit strings are order numbers and timestamps).
    if text.startswith("(") or (text[0] == "0" and len(digits) in (10, 11)):
        # An area code in parentheses, or a trunk 0 and a full national number.
        return checksums.phone_valid(text, international=False)
    if text.isdigit():
        # Ten to thirteen bare digits with no label: a full national number, or one
        # with its country code. Redacting an unlabelled number that happens to be
        # valid costs less than sending a phone number out.
        return 10 <= len(text) <= 13 and (
            (len(text) <= 11 and checksums.phone_valid(text, international=False))
            or checksums.with_country_code_valid(text)
        )
    return checksums.phone_valid(text, international=False, grouped=True)


# An extension after the number: "555-0100x123", "555-0100 ext. 12".
_EXTENSION = engine.compile_bytes(rb"^(?:x| ?ext\.? ?)\d{1,6}", case_sensitive=False)


def _phone(data: bytes, start: int, end: int) -> Span | None:
    extension = next(engine.spans(_EXTENSION, data[end : end + 14]), None)
    full = end + extension[1] if extension is not None else end
    if not _clear(data, start, full, also=b"+.-/:"):
        return None
    context = _context(data, start, _PHONE_WORDS)
    if _phone_ok(data, start, end, context=context):
        return start, full
    # A phone number followed by more digits ("030 1234567 2024"): whole leading groups.
    groups = _groups(data, start, end)
    for last in range(len(groups) - 2, max(-1, len(groups) - 5), -1):
        stop = groups[last][1]
        if _phone_ok(data, start, stop, context=context):
            return start, stop
    return None


PHONE = Detector(
    kind="phone",
    pattern=rb"(?:\+|00)?\(?\d[\d ().\-/]{5,22}\d\)?",
    check=_phone,
    min_digits=7,
    yield_to_blocks=True,
)

# --- dates of birth ----------------------------------------------------------------

_BIRTH_WORDS = engine.compile_bytes(
    # RE2's \b is ASCII-only: "né" needs explicit non-letter neighbours.
    rb"born|birth|\bdob\b|d\.o\.b|geboren|geburt|(?:^|[^\p{L}])n\x{e9}e?(?:[^\p{L}]|$)|naissance|"
    rb"nacimiento|nacid[oa]|nascita|\bnat[oa]\b|geboortedatum|urodzon|f\x{f6}dd|"
    rb"\x{751f}\x{65e5}|\x{51fa}\x{751f}",
    case_sensitive=False,
)
_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("jan", "janv", "januar", "enero", "gennaio", "januari"),
            ("feb", "f\u00e9v", "febr", "februar", "febrero", "febbraio", "februari"),
            ("mar", "m\u00e4r", "mars", "m\u00e4rz", "marzo", "maart"),
            ("apr", "avr", "april", "abril", "aprile"),
            ("may", "mai", "mayo", "maggio", "mei"),
            ("jun", "juin", "juni", "junio", "giugno"),
            ("jul", "juil", "juli", "julio", "luglio"),
            ("aug", "ao\u00fbt", "august", "agosto", "augustus"),
            ("sep", "sept", "september", "septiembre", "settembre"),
            ("oct", "okt", "october", "oktober", "octubre", "ottobre", "octobre"),
            ("nov", "november", "noviembre", "novembre"),
            (
                "dec",
                "dez",
                "d\u00e9c",
                "december",
                "dezember",
                "diciembre",
                "dicembre",
                "d\u00e9cembre",
            ),
        ),
        start=1,
    )
    for name in names
}


def _tokens(text: str) -> list[str]:
    """Runs of digits and runs of letters: "12th March, 1985" -> 12, th, March, 1985."""
    out: list[str] = []
    kind = ""
    for ch in text:
        now = "d" if ch.isdigit() else "a" if ch.isalpha() else ""
        if now and now == kind:
            out[-1] += ch
        elif now:
            out.append(ch)
        kind = now
    return out


def _month(word: str) -> int | None:
    word = word.lower().rstrip(".")
    if len(word) < 3:
        return None
    return _MONTHS.get(word) or _MONTHS.get(word[:3])


def _dob(data: bytes, start: int, end: int) -> Span | None:
    if not _clear(data, start, end) or not _context(data, start, _BIRTH_WORDS):
        return None
    tokens = _tokens(engine.decode(data[start:end]))
    numbers = [int(t) for t in tokens if t.isdigit()]
    months = [m for m in (_month(t) for t in tokens if t.isalpha()) if m is not None]
    if months and len(numbers) >= 2:
        day, year = (numbers[0], numbers[-1]) if numbers[-1] > 31 else (numbers[-1], numbers[0])
        return (start, end) if checksums.date_valid(year, months[0], day) else None
    if len(numbers) != 3:
        return None
    a, b, c = numbers
    if a > 31:  # year first
        return (start, end) if checksums.date_valid(a, b, c) else None
    year = c + 1900 if c < 100 and c > 30 else c + 2000 if c < 100 else c
    ok = checksums.date_valid(year, b, a) or checksums.date_valid(year, a, b)
    return (start, end) if ok else None


# Latin letters only: a Unicode class under a counted repeat makes RE2's automaton large
# and slow, and the month names it serves are Latin-script.
_MONTH_WORD = rb"[A-Za-z\x{e0}-\x{fc}]{3,10}\.?"
DOB = Detector(
    kind="date-of-birth",
    pattern=(
        rb"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4}|"
        rb"\d{1,2}(?:st|nd|rd|th)?\.? (?:de )?"
        + _MONTH_WORD
        + rb",? (?:de )?\d{4}|"
        + _MONTH_WORD
        + rb" \d{1,2}(?:st|nd|rd|th)?,? \d{4}"
    ),
    check=_dob,
    min_digits=5,
    context_gate=_BIRTH_WORDS,
)

# --- national identity numbers and passports ---------------------------------------

_ID_WORDS = engine.compile_bytes(
    rb"\bid\b|identity|identit\x{e9}|national|bsn|burgerservice|sofi|cpf|aadhaar|\buid\b|"
    rb"pesel|personnummer|steuer|idnr|identifikation|insee|s\x{e9}curit\x{e9} sociale|"
    rb"\bnir\b|\bdni\b|\bnie\b|codice fiscale|tax|ausweis|personal",
    case_sensitive=False,
)


def _national(name: str, *, context: bool, separators: bytes = b"") -> Check:
    validate = checksums.NATIONAL_IDS[name]

    def check(data: bytes, start: int, end: int) -> Span | None:
        if not _clear(data, start, end, also=b"-./" + separators) or _more_digits(data, start, end):
            return None
        if context and not _context(data, start, _ID_WORDS):
            return None  # bare digits with a checksum: one order number in ten passes
        return (start, end) if validate(engine.decode(data[start:end])) else None

    return check


_NATIONAL = (
    # (name, pattern, least digits, needs context words)
    # Letters or formatting make these unlike order numbers: no context needed.
    ("es-dni", rb"\d{8}[ \-]?[A-Za-z]", 8, False),
    ("es-nie", rb"[XYZxyz][ \-]?\d{7}[ \-]?[A-Za-z]", 7, False),
    ("it-codice-fiscale", rb"[A-Za-z]{6}\d{2}[A-Za-z]\d{2}[A-Za-z]\d{3}[A-Za-z]", 7, False),
    ("fr-nir", rb"[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[ABab]) ?\d{3} ?\d{3} ?\d{2}", 13, False),
    ("br-cpf", rb"\d{3}\.\d{3}\.\d{3}-\d{2}", 11, False),
    ("in-aadhaar", rb"[2-9]\d{3} \d{4} \d{4}", 12, False),
    ("se-personnummer", rb"(?:\d{2})?\d{6}[-+]\d{4}", 10, False),
    ("cn-ric", rb"\d{17}[\dXx]", 17, False),
    # Bare digits: only where the text says it is an identity number.
    ("nl-bsn", rb"\d{9}", 9, True),
    ("br-cpf", rb"\d{11}", 11, True),
    ("in-aadhaar", rb"[2-9]\d{11}", 12, True),
    ("pl-pesel", rb"\d{11}", 11, True),
    ("de-idnr", rb"\d{2} ?\d{3} ?\d{3} ?\d{3}", 11, True),
)
NATIONAL_IDS = tuple(
    Detector(
        kind="national-id",
        pattern=pattern,
        check=_national(name, context=context),
        min_digits=digits,
        context_gate=_ID_WORDS if context else None,
    )
    for name, pattern, digits, context in _NATIONAL
)

_PASSPORT_WORDS = engine.compile_bytes(
    rb"passport|reisepass|passeport|pasaporte|passaporto|paszport|paspoort|\x{8b77}\x{7167}|\x{62a4}\x{7167}",
    case_sensitive=False,
)


def _passport(data: bytes, start: int, end: int) -> Span | None:
    if not _clear(data, start, end) or not _context(data, start, _PASSPORT_WORDS):
        return None
    return start, end


PASSPORT = Detector(
    kind="national-id",
    # No check digits outside the machine-readable zone: the word "passport" decides.
    pattern=rb"[A-Z]{0,2}\d{6,9}",
    check=_passport,
    min_digits=6,
    context_gate=_PASSPORT_WORDS,
)

# --- secrets -----------------------------------------------------------------------


def _token(data: bytes, start: int, end: int) -> Span | None:
    return (start, end) if _clear(data, start, end, also=b"-") else None


def _jwt(data: bytes, start: int, end: int) -> Span | None:
    header = data[start : data.index(b".", start)]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + b"=" * (-len(header) % 4)))
    except ValueError:
        return None
    return (start, end) if isinstance(decoded, dict) and "alg" in decoded else None


SECRETS = (
    Detector(
        kind="secret",
        pattern=rb"-----BEGIN [A-Z0-9 ]{1,64}-----[\s\S]*?-----END [A-Z0-9 ]{1,64}-----",
        gates=(b"-----BEGIN ",),
    ),
    Detector(
        kind="secret",
        # OpenAI and Anthropic keys (sk-..., sk-proj-..., sk-ant-...), Stripe keys.
        pattern=rb"(?:sk|rk|pk)[-_](?:live_|test_|proj-|ant-)?[A-Za-z0-9_\-]{20,}",
        check=_token,
        gates=(b"sk", b"rk", b"pk"),
    ),
    Detector(
        kind="secret",
        pattern=rb"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}",
        check=_token,
        gates=(b"AKIA", b"ASIA", b"ABIA", b"ACCA"),
    ),
    Detector(
        kind="secret",
        # An AWS secret access key: 40 base64 characters named as such.
        pattern=(
            rb"(?i:aws)[A-Za-z_ \-]{0,20}(?i:secret)[A-Za-z_ \-]{0,20}"
            rb"[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}"
        ),
    ),
    Detector(
        kind="secret",
        pattern=rb"eyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{10,}",
        check=_jwt,
        gates=(b"eyJ",),
    ),
    Detector(
        kind="secret",
        # GitHub, Slack, Google API, Hugging Face tokens.
        pattern=(
            rb"gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}|xox[abprs]-[A-Za-z0-9\-]{10,}|"
            rb"AIza[0-9A-Za-z_\-]{35}|hf_[A-Za-z0-9]{30,}"
        ),
        check=_token,
        gates=(b"gh", b"github_pat_", b"xox", b"AIza", b"hf_"),
    ),
)

# In priority order: on overlapping findings the earlier start wins, then the detector
# listed first (a secret's digits are not a phone number).
BUILTIN: tuple[Detector, ...] = (
    *SECRETS,
    EMAIL,
    IBAN,
    # Check digits and a birth date (cn-ric) outrank Luhn, which one number in ten passes.
    *NATIONAL_IDS,
    CARD,
    SSN,
    PASSPORT,
    IPV4,
    IPV6,
    DOB,
    PHONE,
)
KINDS = (
    "email",
    "phone",
    "credit-card",
    "iban",
    "ip-address",
    "ssn",
    "date-of-birth",
    "national-id",
    "secret",
)
