"""The semantic cache serves paraphrases and never negations or different numbers."""

from __future__ import annotations

import random

import pytest

from kascade.gateway import config
from kascade.gateway.cache import memory as cache

THRESHOLD = 0.8

# Pairs that must NOT share an answer: a negation or a different number.
MUST_MISS = [
    ("Is 7 a prime number?", "Is 9 a prime number?"),
    ("What is 12 times 13?", "What is 12 times 14?"),
    ("Convert 100 dollars to euros", "Convert 1000 dollars to euros"),
    ("How many days are in 2 weeks?", "How many days are in 3 weeks?"),
    ("What happened in 1914?", "What happened in 1941?"),
    ("Set a timer for 5 minutes", "Set a timer for 15 minutes"),
    ("What is 3.5 percent of 200?", "What is 3.5 percent of 250?"),
    ("Give me two reasons to learn Rust", "Give me three reasons to learn Rust"),
    ("What is the first law of thermodynamics?", "What is the second law of thermodynamics?"),
    ("Is the server running on port 8080?", "Is the server running on port 8081?"),
    ("Does Python support multiple inheritance?", "Does Python not support multiple inheritance?"),
    ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?"),
    ("Should I use a VPN?", "Should I never use a VPN?"),
    ("Can dogs eat chocolate?", "Can't dogs eat chocolate?"),
    ("Why does the build pass?", "Why doesn't the build pass?"),
    ("List fruits with seeds", "List fruits without seeds"),
    ("Is the API key valid?", "Is the API key not valid?"),
    ("Which users have admin access?", "Which users have no admin access?"),
    ("Explain why the test is flaky", "Explain why the test is never flaky"),
    (
        "Does the contract include a penalty clause?",
        "Does the contract exclude a penalty clause except late fees?",
    ),
    ("Will it rain tomorrow in Paris?", "Won't it rain tomorrow in Paris?"),
    ("Is this email spam?", "Is this email not spam?"),
]

# Paraphrases that must share an answer at the threshold.
MUST_HIT = [
    ("What is the capital of France?", "Tell me the capital of France"),
    ("What's the capital of France?", "what is the capital of france"),
    ("How do I reverse a list in Python?", "How can I reverse a Python list?"),
    ("Explain how photosynthesis works", "How does photosynthesis work?"),
    ("What are the symptoms of the flu?", "What symptoms does the flu have?"),
    ("Is 7 a prime number?", "is seven a prime number"),
    (
        "Does Python not support multiple inheritance?",
        "Python does not support multiple inheritance?",
    ),
    ("Summarize the benefits of unit testing", "Please summarize the benefits of unit tests"),
]


def _cache() -> cache.SemanticCache:
    return cache.SemanticCache(config=config.SemanticCache(threshold=THRESHOLD, ttlSeconds=60))


def _put(c: cache.SemanticCache, text: str) -> None:
    c.put(context="ctx", text=text, completion={"answer": text}, route="local", confidence=0.9)


@pytest.mark.parametrize(("first", "second"), MUST_MISS)
def test_negations_and_numbers_never_collide(first: str, second: str) -> None:
    c = _cache()
    _put(c, first)
    assert c.lookup(context="ctx", text=second) is None
    c2 = _cache()
    _put(c2, second)
    assert c2.lookup(context="ctx", text=first) is None


def test_at_least_twenty_negation_and_number_pairs() -> None:
    assert len(MUST_MISS) >= 20


@pytest.mark.parametrize(("first", "second"), MUST_HIT)
def test_paraphrases_hit_above_threshold(first: str, second: str) -> None:
    c = _cache()
    _put(c, first)
    hit = c.lookup(context="ctx", text=second)
    assert hit is not None
    assert hit.similarity >= THRESHOLD
    assert hit.entry.completion == {"answer": first}


def test_other_context_or_unrelated_question_misses() -> None:
    c = _cache()
    _put(c, "What is the capital of France?")
    assert c.lookup(context="other", text="What is the capital of France?") is None
    assert c.lookup(context="ctx", text="What is the population of Germany?") is None


def test_without_guards_the_similarity_alone_would_have_collided() -> None:
    # Shows the guards matter: these pairs are near-identical as vectors.
    first, second = "Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?"
    assert cache.cosine(cache.embed(first), cache.embed(second)) > THRESHOLD


def test_exact_cache_ttl_and_lru_bound() -> None:
    c = cache.ExactCache(ttl_seconds=60, max_entries=2)
    for key in ("a", "b", "c"):
        c.put(key, completion={"k": key}, route="local", confidence=None)
    assert c.get("a") is None
    assert len(c) == 2
    expired = cache.ExactCache(ttl_seconds=0.000001, max_entries=2)
    expired.put("a", completion={}, route="local", confidence=None)
    assert expired.get("a") is None


def test_exact_key_normalises_whitespace_and_includes_parameters() -> None:
    body = {"messages": [{"role": "user", "content": "hi  there "}], "temperature": 0}
    same = {"messages": [{"role": "user", "content": "hi there"}], "temperature": 0}
    other = {"messages": [{"role": "user", "content": "hi there"}], "temperature": 1}
    assert cache.exact_key(policy="p", body=body) == cache.exact_key(policy="p", body=same)
    assert cache.exact_key(policy="p", body=body) != cache.exact_key(policy="p", body=other)
    assert cache.exact_key(policy="p", body=body) != cache.exact_key(policy="q", body=body)


def test_whitespace_normalisation_matches_split_and_join_on_any_text() -> None:
    # The fast path for already-normal ASCII text must agree with the general rule on
    # every kind of whitespace str.split() knows, ASCII or not.
    rng = random.Random(12)
    alphabet = [" ", "  ", "a", "é", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]
    alphabet += ["\x1f"]
    alphabet += ["\xa0", "\u2003", "\u3000", "\x85", "\u200b"]
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        assert cache._normalise(text) == " ".join(text.split()), repr(text)


def test_exact_key_tells_apart_tools_tool_turns_and_images() -> None:
    user = {"role": "user", "content": "what is this?"}
    base = {"model": "m", "messages": [user]}
    tool = {"type": "function", "function": {"name": "f"}}
    keys = [
        cache.exact_key(policy="p", body=base),
        cache.exact_key(policy="p", body={**base, "tools": [tool]}),
        cache.exact_key(policy="p", body={**base, "tools": [tool], "tool_choice": "required"}),
    ]
    for url in ("https://x/a.png", "https://x/b.png"):
        image = {"type": "image_url", "image_url": {"url": url}}
        parts = {"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}
        keys.append(cache.exact_key(policy="p", body={**base, "messages": [parts]}))
    for call_id in ("call_1", "call_2"):
        turn = [
            user,
            {"role": "assistant", "content": None, "tool_calls": [{"id": call_id}]},
            {"role": "tool", "tool_call_id": call_id, "content": "ok"},
        ]
        keys.append(cache.exact_key(policy="p", body={**base, "messages": turn}))
    assert len(set(keys)) == len(keys)


def test_semantic_context_holds_the_last_message_images() -> None:
    def context(url: str) -> object:
        image = {"type": "image_url", "image_url": {"url": url}}
        message = {"role": "user", "content": [{"type": "text", "text": "what is it?"}, image]}
        ctx, text = cache.semantic_parts(policy="p", body={"messages": [message]})
        assert text == "what is it?"
        return ctx

    assert context("https://x/a.png") != context("https://x/b.png")
    assert context("https://x/a.png") == context("https://x/a.png")
