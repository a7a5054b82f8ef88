"""Whether a free-text answer gives an expected short answer: numbers or words.

Used to grade the routing-quality bench's items and to label a local answer by an
expert's answer. Small models answer in a sentence ("53 times 23 is 1219."), so
matching looks at where an answer is stated, not at the whole text:

- ``number``: the first sentence of the answer that holds a number (digits, or a
  number word such as "three"); its **last** number is the answer, so "53 times 23 is
  1219" gives 1219, not 53. Thousands separators are dropped ("1,000" is 1000);
  "none" counts as 0. Equal within 1e-9.
- ``text``: the answer's first non-empty line, normalised (accents and case folded,
  punctuation to spaces), holds one accepted answer as whole words.

Both look only at the start of an answer (its first line), so a model that lists
every candidate further down is not credited.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Sequence

__all__ = ["Grading", "agree", "first_line", "matches", "normalize", "stated_number"]

_MAX_LINE = 300
_NUMBER = re.compile(r"[-\u2212]?\d[\d,]*(?:\.\d+)?")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
_WORDS = {
    "none": 0,
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
}
_WORD = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)


class Grading(enum.StrEnum):
    """How an expected answer is compared."""

    NUMBER = "number"
    TEXT = "text"


def normalize(text: str) -> str:
    """Lower case, accents removed, every run of non-alphanumerics one space, trimmed."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return re.sub(r"[^a-z0-9]+", " ", plain.lower()).strip()


def first_line(answer: str) -> str:
    """The first line with any text in it, at most 300 characters."""
    for line in answer.splitlines():
        if line.strip():
            return line.strip()[:_MAX_LINE]
    return ""


def _numbers(text: str) -> list[float]:
    found: list[tuple[int, float]] = []
    for m in _NUMBER.finditer(text):
        raw = m.group().replace(",", "").replace("\u2212", "-")
        found.append((m.start(), float(raw)))
    for m in _WORD.finditer(text):
        found.append((m.start(), float(_WORDS[m.group().lower()])))
    return [value for _, value in sorted(found)]


def stated_number(answer: str) -> float | None:
    """The number an answer states (see the module docstring), or None."""
    for sentence in _SENTENCE_END.split(first_line(answer)):
        numbers = _numbers(sentence)
        if numbers:
            return numbers[-1]
    return None


def _expected_number(text: str) -> float | None:
    numbers = _numbers(text)
    return numbers[0] if len(numbers) == 1 else None


def matches(*, answer: str, expected: Sequence[str], grading: Grading) -> bool:
    """True when ``answer`` gives one of the ``expected`` answers."""
    if grading is Grading.NUMBER:
        got = stated_number(answer)
        if got is None:
            return False
        wanted = [n for n in (_expected_number(e) for e in expected) if n is not None]
        return any(abs(got - n) <= 1e-9 for n in wanted)
    line = f" {normalize(first_line(answer))} "
    return any(f" {n} " in line for n in (normalize(e) for e in expected) if n)


def agree(*, answer: str, reference: str) -> bool:
    """Whether ``answer`` says what ``reference`` (the expert's answer) says: the same
    stated number when the reference states one; else the same first line, or one
    first line of at most 5 words contained, as whole words, in the other. A coarse
    judge for short answers; long free-form answers rarely agree by this rule."""
    number = stated_number(reference)
    if number is not None:
        got = stated_number(answer)
        return got is not None and abs(got - number) <= 1e-9
    ref, loc = normalize(first_line(reference)), normalize(first_line(answer))
    if not ref or not loc:
        return False
    if ref == loc:
        return True
    short, long = sorted((ref, loc), key=len)
    return len(short.split()) <= 5 and f" {short} " in f" {long} "
