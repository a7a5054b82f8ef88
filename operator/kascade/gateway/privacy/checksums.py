"""Check digits and number plans that tell personal data from look-alikes.

A 16-digit order number passes Luhn one time in ten; a payment card also starts with an
issuer prefix. Phone numbers are checked against libphonenumber's per-country number
plans (`phonenumbers`), national IDs against their published check digits
(`python-stdnum`)."""

from __future__ import annotations

import contextlib
import datetime
import threading
from collections.abc import Callable, Iterator

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import verhoeff
from stdnum.br import cpf
from stdnum.cn import ric
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.pl import pesel
from stdnum.se import personnummer
from stdnum.us import ssn

# National formats tried for a number written without a country code: the countries of
# the largest markets and the ones the corpus covers. US covers Canada (NANP).
PHONE_REGIONS = (
    "US",
    "GB",
    "DE",
    "FR",
    "ES",
    "IT",
    "NL",
    "BR",
    "IN",
    "JP",
    "AU",
    "PL",
    "SE",
    "CN",
    "MX",
)
# Issuer identification prefixes of the card networks (Visa, Mastercard, Amex, Discover,
# JCB, Diners, UnionPay, Maestro): a Luhn-valid number starting otherwise is not a card.
_CARD_PREFIXES = ("4", "5", "2", "34", "37", "6", "35", "30", "36", "38", "39")


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


def card_valid(digits: str) -> bool:
    """13 to 19 digits, a card network's prefix and a valid Luhn check digit."""
    if not 13 <= len(digits) <= 19 or not digits.isdigit():
        return False
    if digits[0] == "2" and not 2221 <= int(digits[:4]) <= 2720:
        return False
    return digits.startswith(_CARD_PREFIXES) and luhn_valid(digits)


def iban_valid(text: str) -> bool:
    """True when the IBAN passes the ISO 13616 mod-97 check and its country's format."""
    return bool(stdnum_iban.is_valid(text.upper()))


def iban_length(country: str) -> int | None:
    """The length of an IBAN of this country code, or None for an unknown country."""
    info = stdnum_iban._ibandb.info(country.upper())  # the registry stdnum ships
    if not info or len(info[0][1]) == 0:
        return None
    spec = info[0][1].get("bban")
    if not isinstance(spec, str):
        return None
    return 4 + _bban_length(spec)


def _bban_length(spec: str) -> int:
    # "5n10n2c" style: counts before each type letter.
    total, number = 0, ""
    for ch in spec:
        if ch.isdigit():
            number += ch
        else:
            total += int(number or "0")
            number = ""
    return total


def _plans() -> dict[str, tuple[bool, frozenset[int]]]:
    """Region -> (national numbers are written with a leading 0, lengths of the number
    after it), from libphonenumber's metadata."""
    plans = {}
    for region in PHONE_REGIONS:
        meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
        assert meta is not None
        assert meta.general_desc is not None
        plans[region] = (meta.national_prefix == "0", frozenset(meta.general_desc.possible_length))
    return plans


_PLANS = _plans()
# Countries whose mobile or area-code numbers are also written without the leading 0.
_ALSO_WITHOUT_ZERO = frozenset({"BR", "CN", "IN"})
PHONE_PARSE_BUDGET = 2_000
"""Number-plan checks one request may spend (each costs tens of microseconds); past it,
phone-shaped candidates count as phone numbers unchecked: a text built to exhaust the
scan gets over-redacted, never leaks."""
_budget = threading.local()


@contextlib.contextmanager
def phone_budget(limit: int = PHONE_PARSE_BUDGET) -> Iterator[None]:
    """Bounds the number-plan checks of one request's scan (in the thread running it)."""
    _budget.left = limit
    try:
        yield
    finally:
        del _budget.left


def _regions_for(digits: str) -> list[str]:
    """The countries whose national plan could hold a number of this length and start."""
    out = []
    for region, (zero, lengths) in _PLANS.items():
        if digits.startswith("0") and zero:
            if len(digits) - 1 in lengths:
                out.append(region)
        elif not zero or region in _ALSO_WITHOUT_ZERO or region == "US":
            national = digits[1:] if region == "US" and len(digits) == 11 else digits
            if len(national) in lengths and not (region == "US" and national[0] in "01"):
                out.append(region)
    return out


def phone_valid(text: str, *, international: bool, grouped: bool = False) -> bool:
    """True when the number is valid in some number plan: its own country code's when it
    starts with `+` (or `00`), else one of PHONE_REGIONS' national plans. `grouped`: the
    digit groups as written must also split where that country's national format does
    ("2024-000123" is a valid US number but written like an invoice number)."""
    regions: list[str | None] = [None] if international else list(_regions_for(_digits(text)))
    left: int | None = getattr(_budget, "left", None)
    if left is not None:
        if left < len(regions):
            return bool(regions)  # budget spent: fail closed
        _budget.left = left - len(regions)
    for region in regions:
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if not phonenumbers.is_valid_number(number):
            continue
        if not grouped:
            return True
        national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
        if _digits(national) == _digits(text) and _splits(national) <= _splits(text):
            return True
    return False


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _splits(text: str) -> set[int]:
    """Digit counts before each break between digit groups: "(415) 555-2671" -> {3, 6}."""
    out: set[int] = set()
    count = 0
    for i, ch in enumerate(text):
        if ch.isdigit():
            count += 1
            if i + 1 < len(text) and not text[i + 1].isdigit():
                out.add(count)
    out.discard(count)
    return out


def with_country_code_valid(digits: str) -> bool:
    """Digits that start with a country code, written without "+", maybe keeping the
    national trunk 0 ("33 0 227465501" as people write "+33 (0)2 27 46 55 01")."""
    if phone_valid("+" + digits, international=True):
        return True
    return any(
        digits[size] == "0"
        and phone_valid(f"+{digits[:size]}{digits[size + 1 :]}", international=True)
        for size in (1, 2, 3)
        if len(digits) > size + 7
    )


def ssn_valid(text: str) -> bool:
    """US Social Security Number rules (no area 000/666/9xx, group 00, serial 0000)."""
    return bool(ssn.is_valid(text.replace(" ", "-")))


def date_valid(year: int, month: int, day: int) -> bool:
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return 1900 <= year <= datetime.date.today().year


def _aadhaar(text: str) -> bool:
    compact = text.replace(" ", "").replace("-", "")
    return bool(aadhaar.is_valid(compact)) and verhoeff.is_valid(compact)


# National identity numbers with check digits: name -> validator.
NATIONAL_IDS: dict[str, Callable[[str], bool]] = {
    "es-dni": dni.is_valid,
    "es-nie": nie.is_valid,
    "it-codice-fiscale": codicefiscale.is_valid,
    "fr-nir": nir.is_valid,
    "nl-bsn": bsn.is_valid,
    "br-cpf": cpf.is_valid,
    "in-aadhaar": _aadhaar,
    "pl-pesel": pesel.is_valid,
    "se-personnummer": personnummer.is_valid,
    "cn-ric": ric.is_valid,
    "de-idnr": idnr.is_valid,
}
