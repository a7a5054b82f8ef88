"""Response caches: exact (normalised messages + parameters) and semantic.

The semantic cache embeds the last user message with hashed word and character
n-grams (no model download, microseconds per request) and serves a cached answer only
when cosine similarity is above the policy threshold AND two guards agree: the same
numbers appear, and the same negations appear. Those guards are what keeps "Is 7
prime?" from answering "Is 9 prime?" and "Does X support Y?" from answering "Does X
not support Y?", the classic semantic-cache failures.

Memory is bounded in bytes as well as entries: exact keys are 32-byte digests (not the
prompts), each entry is charged the memory its completion's objects take, and the semantic cache
keeps its vectors in one float32 matrix (16 KiB per entry) searched by one matrix
product. Prompts longer than ``SEMANTIC_MAX_CHARS`` are not semantically cached: their
embedding would stall the event loop, and a near-match of a long document is rarely
the same question.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

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


# What str.split() splits ASCII text on besides a single space, and a run of spaces.
_ASCII_BREAKS = ("  ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f")


def _normalise(text: str) -> str:
    """Whitespace runs collapsed to one space, ends stripped (``" ".join(text.split())``).

    Most prompts already are: ten substring searches (C speed) prove it for ASCII text
    without building the word list, which for a 50 KB prompt was the largest piece of
    one request's work on the event loop.
    """
    if (
        text.isascii()
        and not text.startswith(" ")
        and not text.endswith(" ")
        and not any(brk in text for brk in _ASCII_BREAKS)
    ):
        return text
    return " ".join(text.split())


ExactKey = bytes
"""A 256-bit digest of the policy, normalised messages and parameters: collisions are
as unlikely as a SHA-2 collision, and a 200 KB prompt costs 32 bytes of key."""

# Per-entry bookkeeping beyond the completion's bytes (dict slot, Entry object).
_ENTRY_OVERHEAD = 256


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
    """Digest over the policy, normalised messages and answer-changing parameters."""
    messages = tuple(
        (str(m.get("role")), _normalise(_content_text(m.get("content"))), _beyond_text(m))
        for m in body.get("messages", ())
        if isinstance(m, dict)
    )
    params = tuple((k, _freeze(body[k])) for k in _KEY_PARAMS if k in body)
    return hashlib.blake2b(repr((policy, messages, params)).encode(), digest_size=32).digest()


def completion_bytes(completion: dict[str, Any]) -> int:
    """What an entry is charged against a cache's byte bound: the memory of every
    object in the completion (``sys.getsizeof``), walked rather than serialized (a
    JSON dump of a 50 KB answer was a visible share of a request's work on the loop).
    """
    size = _ENTRY_OVERHEAD
    stack: list[object] = [completion]
    while stack:
        item = stack.pop()
        size += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return size


class ExactCache:
    """TTL + LRU map from exact key to Entry, bounded in entries and in bytes."""

    def __init__(self, *, ttl_seconds: float, max_entries: int, max_bytes: int = 64 << 20) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[ExactKey, Entry] = OrderedDict()
        self._sizes: dict[ExactKey, int] = {}

    def _drop(self, key: ExactKey) -> None:
        del self._entries[key]
        self.bytes -= self._sizes.pop(key)

    def get(self, key: ExactKey) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at < time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(
        self, key: ExactKey, *, completion: dict[str, Any], route: str, confidence: float | None
    ) -> None:
        size = completion_bytes(completion)
        if size > self.max_bytes:
            return  # one answer larger than the whole cache is not kept
        if key in self._entries:
            self._drop(key)
        self._entries[key] = Entry(
            completion=completion,
            route=route,
            confidence=confidence,
            expires_at=time.monotonic() + self.ttl_seconds,
        )
        self._sizes[key] = size
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

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


@functools.lru_cache(maxsize=1 << 16)
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


def dense(vector: dict[int, float]) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The sparse vector as one float32 row of the semantic matrix."""
    row = np.zeros(_DIM, dtype=np.float32)
    if vector:
        row[list(vector)] = list(vector.values())
    return row


def cosine(a: dict[int, float], b: dict[int, float]) -> float:
    """Cosine similarity of two normalised sparse vectors."""
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(k, 0.0) for k, v in a.items())


SEMANTIC_MAX_CHARS = 4_000
_ROW_BYTES = _DIM * 4


@dataclass(frozen=True)
class _SemanticEntry:
    context: ExactKey
    numbers: frozenset[str]
    negations: frozenset[str]
    entry: Entry
    size: int


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
    """Embedded prompts in one float32 matrix, bounded in entries and bytes.

    A lookup is one matrix-vector product over every row (about a millisecond for
    2,000 entries), then the few rows above the threshold are checked against the
    guards; rows of evicted entries are reused.
    """

    def __init__(self, *, config: config_mod.SemanticCache) -> None:
        self.threshold = config.threshold
        self.ttl_seconds = config.ttl_seconds
        self.max_entries = config.max_entries
        self.max_bytes = config.max_bytes
        self.bytes = 0
        self._matrix = np.zeros((0, _DIM), dtype=np.float32)
        self._items: list[_SemanticEntry | None] = []
        self._order: OrderedDict[int, None] = OrderedDict()  # rows, oldest first
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self._order)

    def lookup(self, *, context: ExactKey, text: str) -> SemanticHit | None:
        """Best entry above the threshold whose guards agree, or None."""
        if not self._order or len(text) > SEMANTIC_MAX_CHARS:
            return None
        numbers, negations = guards(text)
        sims = self._matrix[: len(self._items)] @ dense(embed(text))
        now = time.monotonic()
        above = np.flatnonzero(sims >= self.threshold)
        for row in above[np.argsort(-sims[above], kind="stable")]:
            item = self._items[int(row)]
            if item is None or item.entry.expires_at < now:
                continue
            if item.context != context or item.numbers != numbers:
                continue
            if item.negations != negations:
                continue
            return SemanticHit(entry=item.entry, similarity=float(sims[row]))
        return None

    def put(
        self,
        *,
        context: ExactKey,
        text: str,
        completion: dict[str, Any],
        route: str,
        confidence: float | None,
    ) -> None:
        if len(text) > SEMANTIC_MAX_CHARS:
            return
        size = completion_bytes(completion) + _ROW_BYTES
        if size > self.max_bytes:
            return
        numbers, negations = guards(text)
        entry = Entry(
            completion=completion,
            route=route,
            confidence=confidence,
            expires_at=time.monotonic() + self.ttl_seconds,
        )
        row = self._row()
        self._matrix[row] = dense(embed(text))
        self._items[row] = _SemanticEntry(
            context=context, numbers=numbers, negations=negations, entry=entry, size=size
        )
        self._order[row] = None
        self.bytes += size
        while len(self._order) > self.max_entries or self.bytes > self.max_bytes:
            self._evict(next(iter(self._order)))

    def _row(self) -> int:
        if self._free:
            return self._free.pop()
        row = len(self._items)
        if row >= len(self._matrix):  # grow by doubling, up to max_entries rows
            grown = min(max(64, 2 * len(self._matrix)), max(self.max_entries + 1, row + 1))
            matrix = np.zeros((grown, _DIM), dtype=np.float32)
            matrix[: len(self._matrix)] = self._matrix
            self._matrix = matrix
        self._items.append(None)
        return row

    def _evict(self, row: int) -> None:
        item = self._items[row]
        del self._order[row]
        self._items[row] = None
        self._matrix[row] = 0.0  # an empty row never reaches a positive threshold
        self._free.append(row)
        if item is not None:
            self.bytes -= item.size
