"""Prompt-prefix reuse with the real SmolLM2 model: cached cells change no answer.

A sequence reusing the KV cells its ``seq_id`` kept from an earlier request must give
what a fresh engine gives at temperature 0: the same tokens, text and per-token scores
(so the same confidence, which is over generated tokens only). Each case is built so
that a wrong reuse shows: a wrong position, a stale cell past the shared prefix, or
logits not recomputed for the last prompt token would change the tokens or scores.
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterator, Sequence

import pytest

from kascade.serving import confidence, sources
from kascade.serving.runtimes import base
from kascade.serving.runtimes import llama_cpp as llama_runtime

pytestmark = pytest.mark.serving

Answer = tuple[list[int], str, list[float]]


@pytest.fixture(scope="module")
def model_path() -> pathlib.Path:
    return sources.resolve_source(source="builtin://smollm2-135m-instruct")


def _runtime(path: pathlib.Path, n_batch: int = 512) -> llama_runtime.LlamaCppRuntime:
    # One sequence: every request goes to seq_id 0, where the previous one left its cells.
    return llama_runtime.LlamaCppRuntime(
        model_path=path, context_length=512, n_threads=2, parallel=1, n_batch=n_batch
    )


@pytest.fixture
def warm(model_path: pathlib.Path) -> Iterator[llama_runtime.LlamaCppRuntime]:
    runtime = _runtime(model_path)
    yield runtime
    runtime.close()


def _answer(runtime: llama_runtime.LlamaCppRuntime, prompt: Sequence[int], n: int) -> Answer:
    params = base.SamplingParams(max_tokens=n, temperature=0.0)
    steps = list(runtime.generate(prompt=prompt, params=params, cancel=threading.Event()))
    scores = [s.score for s in steps]
    assert all(isinstance(s, confidence.TokenScore) for s in scores)
    return (
        [s.token_id for s in steps],
        "".join(s.text for s in steps),
        [p for s in scores if s is not None for p in (s.prob, s.top1, s.top2)],
    )


def _fresh(path: pathlib.Path, prompt: Sequence[int], n: int, n_batch: int = 512) -> Answer:
    runtime = _runtime(path, n_batch)
    try:
        return _answer(runtime, prompt, n)
    finally:
        runtime.close()


def _chat(runtime: llama_runtime.LlamaCppRuntime, text: str) -> list[int]:
    return runtime.prompt_tokens(messages=[base.Message(role="user", content=text)])


def _reused(runtime: llama_runtime.LlamaCppRuntime) -> int:
    return runtime._engine.reused_tokens


def test_a_prompt_diverging_after_a_shared_prefix_gets_the_fresh_answer(
    warm: llama_runtime.LlamaCppRuntime, model_path: pathlib.Path
) -> None:
    first = _chat(warm, "What is the capital of France? Answer in one word.")
    second = _chat(warm, "What is the capital of Italy? Answer in one word.")
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    want = _fresh(model_path, second, 12)
    _answer(warm, first, 12)
    got = _answer(warm, second, 12)
    assert _reused(warm) == shared  # the system prompt and "What is the capital of"
    assert got == want  # tokens (so their count), text, every step's scores


def test_a_fully_cached_prompt_gets_the_fresh_answer(
    warm: llama_runtime.LlamaCppRuntime, model_path: pathlib.Path
) -> None:
    prompt = _chat(warm, "Write one sentence about the sea.")
    want = _fresh(model_path, prompt, 16)
    assert _answer(warm, prompt, 16) == want  # nothing cached yet: a plain evaluation
    got = _answer(warm, prompt, 16)  # all cached: only the last prompt token again
    assert _reused(warm) == len(prompt) - 1
    assert got == want  # tokens (so their count), text, every step's scores


def test_a_prompt_that_is_a_strict_prefix_of_the_cached_cells_gets_the_fresh_answer(
    warm: llama_runtime.LlamaCppRuntime, model_path: pathlib.Path
) -> None:
    long = _chat(warm, "List five animals that live in the ocean and say one fact about each.")
    short = long[:-9]  # ends inside the user's message: the cells past it must go
    want = _fresh(model_path, short, 12)
    _answer(warm, long, 8)
    got = _answer(warm, short, 12)
    assert _reused(warm) == len(short) - 1
    assert got == want  # tokens (so their count), text, every step's scores


def test_a_follow_up_turn_reuses_the_previous_answer_and_gets_the_fresh_answer(
    warm: llama_runtime.LlamaCppRuntime, model_path: pathlib.Path
) -> None:
    question = "Name a fruit that is yellow."
    first = _answer(warm, _chat(warm, question), 12)
    follow_up = warm.prompt_tokens(
        messages=[
            base.Message(role="user", content=question),
            base.Message(role="assistant", content=first[1]),
            base.Message(role="user", content="And one that is red?"),
        ]
    )
    # The fresh engine evaluates the prompt in 16-token chunks. In one 66-token batch
    # llama.cpp's CPU matmuls take another path whose rounding moves the scores by up
    # to 0.07 here (the tokens stay): a batch-shape effect of llama.cpp (its server's
    # cache_prompt has it too), not of reuse. Every batch in the reuse run is small.
    want = _fresh(model_path, follow_up, 12, n_batch=16)
    got = _answer(warm, follow_up, 12)
    assert _reused(warm) > len(_chat(warm, question))  # into the generated answer
    assert got == want  # tokens (so their count), text, every step's scores
