"""The synthetic corpus of bench/privacy.py: chat requests that embed known personal data
(one planted value each, in a varied field and position) and requests full of
look-alikes that are not personal data. Faker with thirteen locales and a fixed seed, so
every run scores the same corpus; generated IDs are kept only when their check digits
hold (Faker does not always compute them), so every planted value is real-shaped."""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import phonenumbers
from faker import Faker
from stdnum import iban as stdnum_iban
from stdnum import verhoeff
from stdnum.br import cpf
from stdnum.cn import ric
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.pl import pesel
from stdnum.se import personnummer
from stdnum.us import ssn

LOCALES = {
    "en_US": "US", "en_GB": "GB", "de_DE": "DE", "fr_FR": "FR", "es_ES": "ES",
    "it_IT": "IT", "nl_NL": "NL", "pt_BR": "BR", "en_IN": "IN", "pl_PL": "PL",
    "sv_SE": "SE", "zh_CN": "CN", "ja_JP": "JP",
}  # fmt: skip
KINDS = (
    "email", "phone", "credit-card", "iban", "ip-address", "ssn", "date-of-birth",
    "national-id", "secret",
)  # fmt: skip


@dataclass
class Sample:
    body: dict[str, Any]
    kind: str | None
    """The planted value's kind; None for a look-alike request."""
    value: str | None
    field: str


class Corpus:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.fakers = {}
        for i, locale in enumerate(LOCALES):
            fake = Faker(locale)
            fake.seed_instance(seed + i)
            self.fakers[locale] = fake
        self.rejected: dict[str, int] = {}
        """Faker values dropped because their check digits or number plan do not hold."""

    def fake(self, *locales: str) -> Faker:
        return self.fakers[self.rng.choice(locales or tuple(LOCALES))]

    def _valid(self, kind: str, make: Callable[[], str], ok: Callable[[str], bool]) -> str:
        for _ in range(50):
            value = make()
            if ok(value):
                return value
            self.rejected[kind] = self.rejected.get(kind, 0) + 1
        raise RuntimeError(f"no valid {kind} in 50 tries")

    # --- personal data, each kind in several written forms ---------------------------

    def email(self) -> str:
        r = self.rng.random()
        fake = self.fake()
        if r < 0.6:
            return str(fake.email())
        local = self.fake("de_DE", "fr_FR", "es_ES", "sv_SE", "pl_PL").first_name().lower()
        local = (
            local.replace(" ", "") + self.rng.choice(["", ".", "_"]) + str(self.rng.randint(1, 99))
        )
        if r < 0.85:
            return f"{local}@{fake.free_email_domain()}"
        domain = self.rng.choice(["exämple.de", "müller-bau.at", "société.fr", "пример.рф",
                                  "例子.中国", "bücher.example"])  # fmt: skip
        return f"{local}@{domain}"

    def phone(self) -> tuple[str, str]:
        locale = self.rng.choice(list(LOCALES))
        region = LOCALES[locale]
        fake = self.fakers[locale]

        def make() -> str:
            return str(fake.phone_number())

        def ok(text: str) -> bool:
            try:
                return phonenumbers.is_valid_number(phonenumbers.parse(text, region))
            except phonenumbers.NumberParseException:
                return False

        raw = self._valid("phone", make, ok)
        number = phonenumbers.parse(raw, region)
        style = self.rng.choice(["faker", "e164", "international", "national", "bare"])
        formats = {
            "e164": phonenumbers.PhoneNumberFormat.E164,
            "international": phonenumbers.PhoneNumberFormat.INTERNATIONAL,
            "national": phonenumbers.PhoneNumberFormat.NATIONAL,
        }
        if style in formats:
            return phonenumbers.format_number(number, formats[style]), style
        if style == "bare":  # digits only, national or with the country code (no extension)
            form = self.rng.choice(
                [phonenumbers.PhoneNumberFormat.NATIONAL, phonenumbers.PhoneNumberFormat.E164]
            )
            written = phonenumbers.format_number(number, form)
            return "".join(ch for ch in written if ch.isdigit()), style
        return raw, style

    def card(self) -> str:
        kind = self.rng.choice(["visa16", "mastercard", "amex", "discover", "jcb16", "diners"])
        digits = str(self.fakers["en_US"].credit_card_number(kind))
        sep = self.rng.choice(["", " ", "-", ".", "/", " - "])
        if len(digits) == 15:
            groups = [digits[:4], digits[4:10], digits[10:]]
        else:
            groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
        return sep.join(groups)

    def iban(self) -> str:
        value = self._valid("iban", lambda: str(self.fake().iban()), stdnum_iban.is_valid)
        style = self.rng.random()
        if style < 0.3:
            value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
        elif style < 0.5:
            value = value.lower()
        elif style < 0.7:
            value = " ".join(value[i : i + 4] for i in range(0, len(value), 4)).lower()
        elif style < 0.8:
            value = "-".join(value[i : i + 4] for i in range(0, len(value), 4))
        return value

    def ssn(self) -> tuple[str, bool]:
        value = self._valid("ssn", lambda: str(self.fakers["en_US"].ssn()), ssn.is_valid)
        style = self.rng.random()
        if style < 0.6:
            return value, False
        if style < 0.8:
            return value.replace("-", " "), False
        return value.replace("-", ""), True  # bare digits: "SSN" written before

    def ip(self) -> str:
        fake = self.fakers["en_US"]
        return str(self.rng.choice([fake.ipv4_public, fake.ipv4_private, fake.ipv6])())

    def dob(self) -> str:
        fake = self.fake()
        day = fake.date_of_birth(minimum_age=18, maximum_age=90)
        months = ["January", "February", "March", "April", "May", "June", "July", "August",
                  "September", "October", "November", "December"]  # fmt: skip
        style = self.rng.choice(["iso", "dmy/", "dmy.", "mdy/", "long", "us-long", "es"])
        if style == "iso":
            return day.isoformat()
        if style == "dmy/":
            return day.strftime("%d/%m/%Y")
        if style == "dmy.":
            return day.strftime("%d.%m.%Y")
        if style == "mdy/":
            return day.strftime("%m/%d/%Y")
        if style == "long":
            return f"{day.day} {months[day.month - 1]} {day.year}"
        if style == "es":
            es = ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto",
                  "septiembre", "octubre", "noviembre", "diciembre"]  # fmt: skip
            return f"{day.day} de {es[day.month - 1]} de {day.year}"
        return f"{months[day.month - 1]} {day.day}, {day.year}"

    def national_id(self) -> tuple[str, str]:
        """(value, the words written before it)."""
        f = self.fakers
        choices: list[tuple[str, Callable[[], str], Callable[[str], bool], str]] = [
            ("es-dni", lambda: str(f["es_ES"].nif()), dni.is_valid, "DNI"),
            ("es-nie", lambda: str(f["es_ES"].nie()), nie.is_valid, "NIE"),
            ("it-cf", lambda: str(f["it_IT"].ssn()), codicefiscale.is_valid, "codice fiscale"),
            ("fr-nir", lambda: str(f["fr_FR"].ssn()), nir.is_valid, "numéro de sécurité sociale"),
            ("nl-bsn", lambda: str(f["nl_NL"].ssn()), bsn.is_valid, "BSN"),
            ("br-cpf", lambda: str(f["pt_BR"].cpf()), cpf.is_valid, "CPF"),
            ("pl-pesel", lambda: str(f["pl_PL"].pesel()), pesel.is_valid, "PESEL"),
            ("se-pnr", lambda: str(f["sv_SE"].ssn()), personnummer.is_valid, "personnummer"),
            ("cn-ric", lambda: str(f["zh_CN"].ssn()), ric.is_valid, "身份证 ID"),
            ("in-aadhaar", self._aadhaar, verhoeff.is_valid, "Aadhaar"),
            ("de-idnr", self._idnr, idnr.is_valid, "Steuer-ID"),
            ("passport", lambda: str(self.fake("en_US", "es_ES", "it_IT").passport_number()),
             lambda v: True, "passport number"),
        ]  # fmt: skip
        name, make, ok, words = self.rng.choice(choices)
        return self._valid(name, make, lambda v: bool(ok(v.replace(" ", "")))), words

    def _aadhaar(self) -> str:
        body = str(self.rng.randint(2, 9)) + "".join(self.rng.choices(string.digits, k=10))
        value = body + verhoeff.calc_check_digit(body)
        return (
            " ".join(value[i : i + 4] for i in range(0, 12, 4))
            if self.rng.random() < 0.5
            else value
        )

    def _idnr(self) -> str:
        from stdnum.iso7064 import mod_11_10

        # Ten digits where exactly one digit appears twice (the IdNr's own rule).
        digits = self.rng.sample(string.digits, 9)
        digits.append(self.rng.choice(digits))
        while digits[0] == "0":
            self.rng.shuffle(digits)
        body = "".join(digits)
        return body + mod_11_10.calc_check_digit(body)

    def secret(self) -> str:
        rng = self.rng
        alnum = string.ascii_letters + string.digits

        def rand(n: int, alphabet: str = alnum) -> str:
            return "".join(rng.choices(alphabet, k=n))

        style = rng.choice(["openai", "anthropic", "aws-id", "aws-secret", "jwt", "pem", "github",
                            "slack", "google"])  # fmt: skip
        if style == "openai":
            return "sk-" + rng.choice(["", "proj-"]) + rand(48)
        if style == "anthropic":
            return "sk-ant-api03-" + rand(80, alnum + "-_")
        if style == "aws-id":
            return "AKIA" + rand(16, string.ascii_uppercase + string.digits)
        if style == "aws-secret":
            return "aws_secret_access_key=" + rand(40, alnum + "/+")
        if style == "jwt":
            header = _b64({"alg": "HS256", "typ": "JWT"})
            payload = _b64({"sub": rand(8), "iat": rng.randint(1_600_000_000, 1_800_000_000)})
            return f"{header}.{payload}.{rand(43, alnum + '-_')}"
        if style == "pem":
            lines = "\n".join(rand(64, alnum + "+/") for _ in range(rng.randint(3, 8)))
            return f"-----BEGIN PRIVATE KEY-----\n{lines}\n-----END PRIVATE KEY-----"
        if style == "github":
            return "ghp_" + rand(36)
        if style == "slack":
            return "xoxb-" + "-".join(rand(12, string.digits) for _ in range(2)) + "-" + rand(24)
        return "AIza" + rand(35, alnum + "-_")

    # --- planting ----------------------------------------------------------------------

    def planted(self, kind: str) -> Sample:
        """One request with one value of `kind` in a random field and position."""
        words = ""
        if kind == "email":
            value = self.email()
        elif kind == "phone":
            value, style = self.phone()
            if style == "bare" or self.rng.random() < 0.3:
                words = self.rng.choice(["call me on", "phone:", "Tel.", "mobile", "WhatsApp"])
        elif kind == "credit-card":
            value = self.card()
        elif kind == "iban":
            value = self.iban()
        elif kind == "ssn":
            value, needs_words = self.ssn()
            words = "SSN" if needs_words or self.rng.random() < 0.3 else ""
        elif kind == "ip-address":
            value = self.ip()
        elif kind == "date-of-birth":
            value = self.dob()
            words = self.rng.choice(["born on", "DOB:", "date of birth", "Geburtsdatum:",
                                     "née le", "fecha de nacimiento:", "birthday"])  # fmt: skip
        elif kind == "national-id":
            value, words = self.national_id()
        else:
            value = self.secret()
        return self._place(kind, value, words)

    def _sentence(self) -> str:
        return str(self.fake().sentence(nb_words=self.rng.randint(4, 14)))

    def _place(self, kind: str, value: str, words: str) -> Sample:
        phrase = f"{words} {value}" if words else value
        before, after = self._sentence(), self._sentence()
        text = self.rng.choice([f"{phrase} {after}", f"{before} {phrase}. {after}",
                                f"{before} {phrase}"])  # fmt: skip
        fields = ["content", "part", "system", "tool-arguments", "nested-json", "tool-result",
                  "stop"]  # fmt: skip
        field = self.rng.choice([*fields, "name"] if kind == "email" else fields)
        body = _request(self._sentence())
        messages = body["messages"]
        if field == "content":
            messages[-1]["content"] = text
        elif field == "part":
            messages[-1]["content"] = [{"type": "text", "text": self._sentence()},
                                       {"type": "text", "text": text}]  # fmt: skip
        elif field == "system":
            messages.insert(0, {"role": "system", "content": text})
        elif field == "name":
            messages[-1]["name"] = value
        elif field in ("tool-arguments", "nested-json"):
            key = words.rstrip(":.").lower().replace(" ", "_") or kind.replace("-", "_")
            args: Any = {key: value, "note": before}
            if field == "nested-json":
                args = {"customer": {"contacts": [{"type": kind, **args}]}, "limit": 5}
            messages.append(_tool_call(json.dumps(args, ensure_ascii=self.rng.random() < 0.5)))
        elif field == "tool-result":
            messages.append(_tool_call(json.dumps({"query": before})))
            messages.append({"role": "tool", "tool_call_id": "call_1", "content": text})
        else:
            body["stop"] = [f"{words} {value}".strip()]
        return Sample(body=body, kind=kind, value=value, field=field)

    # --- look-alikes -------------------------------------------------------------------

    def lookalike(self) -> Sample:
        """A request whose numbers and tokens are all not personal data."""
        pieces = [self._lookalike() for _ in range(self.rng.randint(2, 4))]
        text = " ".join(f"{self._sentence()} {p}" for p in pieces)
        field = self.rng.choice(["content", "tool-arguments", "tool-result"])
        body = _request(text if field == "content" else self._sentence())
        if field == "tool-arguments":
            body["messages"].append(_tool_call(json.dumps({"q": text, "ids": pieces})))
        elif field == "tool-result":
            body["messages"].append(_tool_call("{}"))
            body["messages"].append({"role": "tool", "tool_call_id": "call_1", "content": text})
        return Sample(body=body, kind=None, value=None, field=field)

    def _lookalike(self) -> str:
        rng = self.rng

        def d(n: int) -> str:
            return "".join(rng.choices(string.digits, k=n))

        def hexs(n: int) -> str:
            return "".join(rng.choices("0123456789abcdef", k=n))

        fake = self.fakers["en_US"]
        options: list[Callable[[], str]] = [
            lambda: f"order #{d(rng.randint(6, 12))}",
            lambda: f"invoice {rng.randint(2019, 2026)}-{d(6)}",
            lambda: f"ORD-{d(4)}-{d(4)}",
            lambda: "version " + ".".join(str(rng.randint(0, 20)) for _ in range(4)),
            lambda: f"v{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 20)}",
            lambda: f"python {rng.choice(['3.11.7', '3.12.1', '2.7.18'])}",
            lambda: f"${rng.randint(1, 99)},{d(3)}.{d(2)}",
            lambda: f"{rng.randint(1, 999)}.{d(3)},{d(2)} €",
            lambda: f"EUR {rng.randint(1, 99)} {d(3)},00",
            lambda: fake.iso8601(),
            lambda: f"{fake.date()} {fake.time()}",
            lambda: f"ts={rng.randint(1_500_000_000, 1_800_000_000)}",
            lambda: f"epoch_ms {rng.randint(1_500_000_000_000, 1_800_000_000_000)}",
            lambda: f"sha1 {hexs(40)}",
            lambda: f"commit {hexs(7)}",
            lambda: str(fake.uuid4()),
            lambda: f"sha256:{hexs(64)}",
            lambda: f"meeting on {fake.date()}",
            lambda: f"due {fake.date(pattern='%d/%m/%Y')}",
            lambda: f"ref {self._bad_card()}",
            lambda: f"account {self._bad_iban()}",
            lambda: f"ISBN 978-{d(1)}-{d(2)}-{d(6)}-{d(1)}",
            lambda: f"{rng.randint(1, 999)} {d(3)} {d(3)} bytes",
            lambda: f"{fake.time(pattern='%H:%M')}-{fake.time(pattern='%H:%M')}",
            lambda: f"ratio {rng.randint(1, 21)}:{rng.randint(1, 12)}",
            lambda: f"port {rng.randint(1024, 65535)}, HTTP {rng.choice([200, 404, 503])}",
            lambda: f"tracking 1Z{d(3)}AA{d(10)}",
            lambda: rng.choice(["task-force", "risk-free plan", "desk-top", "ask-me-anything"]),
            lambda: f"{rng.randint(1, 9)}.{d(5)}e-{rng.randint(1, 12)}",
            lambda: f"SKU {d(8)}",
            lambda: f"ticket {d(3)}-{d(4)}",
            lambda: f"build {d(4)}.{d(2)}.{d(2)}",
        ]  # fmt: skip
        return rng.choice(options)()

    def _bad_card(self) -> str:
        digits = str(self.fakers["en_US"].credit_card_number("visa16"))
        last = str((int(digits[-1]) + self.rng.randint(1, 9)) % 10)
        bad = digits[:-1] + last
        return " ".join(bad[i : i + 4] for i in range(0, 16, 4))

    def _bad_iban(self) -> str:
        value = str(self.fake().iban())
        check = self.rng.choice([c for c in range(2, 99) if c != int(value[2:4])])
        return f"{value[:2]}{check:02d}{value[4:]}"


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _request(text: str) -> dict[str, Any]:
    return {"model": "bench", "messages": [{"role": "user", "content": text}]}


def _tool_call(arguments: str) -> dict[str, Any]:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": arguments}}  # fmt: skip
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def build(
    *, seed: int, per_kind: int, lookalikes: int
) -> tuple[list[Sample], list[Sample], Corpus]:
    corpus = Corpus(seed)
    planted = [corpus.planted(kind) for kind in KINDS for _ in range(per_kind)]
    corpus.rng.shuffle(planted)
    clean = [corpus.lookalike() for _ in range(lookalikes)]
    return planted, clean, corpus
