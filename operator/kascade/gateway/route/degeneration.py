"""The degeneration detector: answers no token probability flags as bad.

A small model can be sure of itself while it loops ("a tapestry of life, a tapestry of
life, ...") or parrots the question back, so these checks look at the text:

- ``empty``: nothing but whitespace.
- ``repetition``: the share of the answer's word n-grams (n = 3) that repeat an
  earlier one. A loop drives it towards 1; ordinary prose stays near 0. Answers of
  fewer than 8 words are not judged (too few n-grams to tell).
- ``prompt_echo``: the share of the answer's word n-grams that also occur in the
  last user message. An answer that restates the question and stops scores near 1;
  "The capital of France is Paris." for "What is the capital of France?" scores 0.5.
- ``cut_off``: generation stopped at ``max_tokens`` (finish reason ``length``).

:func:`detect` measures; :func:`verdict` applies a policy's limits and names the first
one broken, which becomes the escalation reason ``degenerate`` with that detail.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Features", "Limits", "detect", "prompt_text", "verdict"]

_N = 3
_MIN_WORDS = 8
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Features:
    """What the detector measured on one answer."""

    empty: bool
    repetition: float
    """Share of word trigrams that repeat an earlier one, in [0, 1]."""
    prompt_echo: float
    """Share of word trigrams also in the prompt, in [0, 1]."""
    cut_off: bool
    words: int

    def as_signals(self) -> dict[str, float]:
        """The features as numbers, keyed for the combined score."""
        return {
            "degenerate_empty": float(self.empty),
            "repetition": self.repetition,
            "prompt_echo": self.prompt_echo,
            "cut_off": float(self.cut_off),
            "answer_words": float(self.words),
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """A policy's degeneration limits (``confidence.degeneration``)."""

    max_repetition: float = 0.5
    max_prompt_echo: float = 0.9
    escalate_cut_off: bool = False


def _ngrams(words: Sequence[str]) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + _N]) for i in range(len(words) - _N + 1)]


def detect(*, answer: str, prompt: str, finish_reason: str | None) -> Features:
    """Measures one answer against the prompt it answers."""
    words = [w.lower() for w in _WORD.findall(answer)]
    grams = _ngrams(words)
    repetition = 0.0
    if len(words) >= _MIN_WORDS and grams:
        repetition = 1.0 - len(set(grams)) / len(grams)
    echo = 0.0
    if grams:
        prompt_grams = set(_ngrams([w.lower() for w in _WORD.findall(prompt)]))
        echo = sum(g in prompt_grams for g in grams) / len(grams)
    return Features(
        empty=not answer.strip(),
        repetition=repetition,
        prompt_echo=echo,
        cut_off=finish_reason == "length",
        words=len(words),
    )


def verdict(*, features: Features, limits: Limits) -> str | None:
    """The first limit the answer breaks (``empty``, ``repetition``, ``prompt_echo``,
    ``cut_off``), or None when it breaks none."""
    if features.empty:
        return "empty"
    if features.repetition > limits.max_repetition:
        return "repetition"
    if features.prompt_echo > limits.max_prompt_echo:
        return "prompt_echo"
    if limits.escalate_cut_off and features.cut_off:
        return "cut_off"
    return None


def prompt_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The last user message's text (string content, or the text parts of a list)."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
    return ""
