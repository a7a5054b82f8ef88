"""Response caches: exact (normalised messages + parameters) and semantic.

The semantic cache embeds the last user message with hashed word and character
n-grams (no model download, microseconds per request) and serves a cached answer only
when cosine similarity is above the policy threshold AND two guards agree: the same
numbers appear, and the same negations appear. Those guards are what keeps "Is 7
prime?" from answering "Is 9 prime?" and "Does X support Y?" from answering "Does X
not support Y?", the classic semantic-cache failures.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from kascade.gateway import config as config_mod

# Parameters that change the answer, so they are part of the key.
_KEY_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "seed",
    "n",
    "response_format",
    # Also answer-changing: the tools offered and how they may be called, and the rest
    # of what a provider honours (a different value may give a different answer).
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "max_completion_tokens",
    "reasoning_effort",
    "verbosity",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
)


@dataclass(frozen=True)
class Entry:
    """A cached completion and where it originally came from."""

    completion: dict[str, Any]
    route: str
    confidence: float | None
    expires_at: float


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def _normalise(text: str) -> str:
    return " ".join(text.split())


ExactKey = tuple[object, ...]


def _freeze(value: object) -> object:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _beyond_text(message: dict[str, Any]) -> object:
    """What a message holds besides its text (tool calls and their ids, images, ...):
    two turns that differ only there must not share an answer."""
    content = message.get("content")
    parts = [
        p for p in content if isinstance(p, dict) and p.get("type") != "text"
    ] if isinstance(content, list) else []  # fmt: skip
    rest = {k: v for k, v in message.items() if k not in ("role", "content")}
    return _freeze([parts, rest]) if parts or rest else ()


def exact_key(*, policy: str, body: dict[str, Any]) -> ExactKey:
    """Key over the policy, normalised messages and answer-changing parameters.

    A plain tuple: the dict compares it in full, so different prompts never collide
    (a digest would be smaller but could)."""
    messages = tuple(
        (str(m.get("role")), _normalise(_content_text(m.get("content"))), _beyond_text(m))
        for m in body.get("messages", ())
        if isinstance(m, dict)
    )
    params = tuple((k, _freeze(body[k])) for k in _KEY_PARAMS if k in body)
    return (policy, messages, params)


class ExactCache:
    """TTL + LRU bounded map from exact key to Entry."""

    def __init__(self, *, ttl_seconds: float, max_entries: int) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[ExactKey, Entry] = OrderedDict()

    def get(self, key: ExactKey) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(
        self, key: ExactKey, *, completion: dict[str, Any], route: str, confidence: float | None
    ) -> None:
        self._entries[key] = Entry(
            completion=completion,
            route=route,
            confidence=confidence,
            expires_at=time.monotonic() + self.ttl_seconds,
        )
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


# ---- semantic -------------------------------------------------------------------------

_DIM = 1 << 12
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NUMBER_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
    "twenty": "20",
    "hundred": "100",
    "thousand": "1000",
    "million": "1000000",
    "billion": "1000000000",
    "half": "0.5",
    "twice": "x2",
    "double": "x2",
    "triple": "x3",
    "first": "#1",
    "second": "#2",
    "third": "#3",
}
_NEGATIONS = {
    "not",
    "no",
    "never",
    "none",
    "nobody",
    "nothing",
    "neither",
    "nor",
    "nowhere",
    "without",
    "cannot",
    "cant",
    "dont",
    "doesnt",
    "didnt",
    "isnt",
    "arent",
    "wasnt",
    "werent",
    "wont",
    "wouldnt",
    "shouldnt",
    "couldnt",
    "hasnt",
    "havent",
    "hadnt",
    "mustnt",
    "except",
    "excluding",
    "lack",
    "lacks",
    "fail",
    "fails",
    "false",
}
_CONTRACTIONS = {
    "what's": "what is",
    "it's": "it is",
    "how's": "how is",
    "that's": "that is",
    "who's": "who is",
    "where's": "where is",
    "i'm": "i am",
    "can't": "cannot",
    "won't": "wont",
    "n't": " not",
}
_STOPWORDS = {
    "a",
    "an",
    "the",
    "is",
    "are",
    "was",
    "were",
    "be",
    "to",
    "of",
    "in",
    "on",
    "for",
    "me",
    "please",
    "can",
    "could",
    "you",
    "would",
    "tell",
    "i",
    "do",
    "does",
    "what",
    "how",
    "and",
    "or",
    "my",
    "your",
    "it",
    "this",
    "that",
    "with",
    "about",
    "give",
    "explain",
    "describe",
    "show",
    "us",
    "we",
    "let",
    "know",
    "want",
    "need",
    "like",
}


def _tokens(text: str) -> list[str]:
    text = text.lower()
    for short, long in _CONTRACTIONS.items():
        text = text.replace(short, long)
    out = []
    for tok in _WORD.findall(text):
        tok = tok.replace("'", "")
        out.append(_NUMBER_WORDS.get(tok, tok))
    return out


def _stem(word: str) -> str:
    for suffix in ("ing", "edly", "ed", "ies", "es", "s", "ly"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def guards(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """(numbers, negations) that two prompts must share for a semantic hit."""
    toks = _tokens(text)
    numbers = frozenset(
        t.replace(",", "")
        for t in toks
        if _NUMBER.fullmatch(t) or (t.startswith(("x", "#")) and t[1:].isdigit())
    )
    negations = frozenset(t for t in toks if t in _NEGATIONS)
    return numbers, negations


def _bucket(feature: str) -> int:
    return int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=4).digest()) % _DIM


def embed(text: str) -> dict[int, float]:
    """Sparse L2-normalised vector of hashed content words, word bigrams and char 3-grams."""
    words = [_stem(t) for t in _tokens(text) if t not in _STOPWORDS]
    vec: dict[int, float] = {}
    for w in words:
        i = _bucket("w:" + w)
        vec[i] = vec.get(i, 0.0) + 1.0
        padded = f" {w} "
        for j in range(len(padded) - 2):
            k = _bucket("c:" + padded[j : j + 3])
            vec[k] = vec.get(k, 0.0) + 0.25
    for a, b in itertools.pairwise(words):
        i = _bucket(f"b:{a} {b}")
        vec[i] = vec.get(i, 0.0) + 0.5
    norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
    return {k: v / norm for k, v in vec.items()}


def cosine(a: dict[int, float], b: dict[int, float]) -> float:
    """Cosine similarity of two normalised sparse vectors."""
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(k, 0.0) for k, v in a.items())


@dataclass(frozen=True)
class _SemanticEntry:
    context: ExactKey
    vector: dict[int, float]
    numbers: frozenset[str]
    negations: frozenset[str]
    entry: Entry


@dataclass(frozen=True)
class SemanticHit:
    entry: Entry
    similarity: float


def semantic_parts(*, policy: str, body: dict[str, Any]) -> tuple[ExactKey, str]:
    """(context key, last user text): earlier messages and parameters must match exactly."""
    messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
    last = _content_text(messages[-1].get("content")) if messages else ""
    # Only the last message's text is compared by similarity: what else it holds
    # (images, tool results' ids) belongs to the context, which must match exactly.
    rest = [{**messages[-1], "content": ""}] if messages and _beyond_text(messages[-1]) else []
    if rest and isinstance(messages[-1].get("content"), list):
        rest[0]["content"] = [
            p for p in messages[-1]["content"] if isinstance(p, dict) and p.get("type") != "text"
        ]
    head = {**body, "messages": messages[:-1] + rest, "stream": None, "model": None}
    return exact_key(policy=policy, body=head), last


class SemanticCache:
    """Bounded list of embedded prompts; a linear scan is cheap at these sizes."""

    def __init__(self, *, config: config_mod.SemanticCache) -> None:
        self.threshold = config.threshold
        self.ttl_seconds = config.ttl_seconds
        self.max_entries = config.max_entries
        self._entries: OrderedDict[int, _SemanticEntry] = OrderedDict()
        self._next = 0

    def lookup(self, *, context: ExactKey, text: str) -> SemanticHit | None:
        """Best entry above the threshold whose guards agree, or None."""
        vector = embed(text)
        numbers, negations = guards(text)
        now = time.monotonic()
        best: SemanticHit | None = None
        for key, item in list(self._entries.items()):
            if item.entry.expires_at < now:
                del self._entries[key]
                continue
            if item.context != context or item.numbers != numbers:
                continue
            if item.negations != negations:
                continue
            sim = cosine(vector, item.vector)
            if sim >= self.threshold and (best is None or sim > best.similarity):
                best = SemanticHit(entry=item.entry, similarity=sim)
        return best

    def put(
        self,
        *,
        context: ExactKey,
        text: str,
        completion: dict[str, Any],
        route: str,
        confidence: float | None,
    ) -> None:
        numbers, negations = guards(text)
        entry = Entry(
            completion=completion,
            route=route,
            confidence=confidence,
            expires_at=time.monotonic() + self.ttl_seconds,
        )
        self._entries[self._next] = _SemanticEntry(
            context=context, vector=embed(text), numbers=numbers, negations=negations, entry=entry
        )
        self._next += 1
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
