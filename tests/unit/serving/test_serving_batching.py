"""Continuous batching with the real SmolLM2 model: sequences share one context."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import llama_cpp  # noqa: F401  (the serving extra is part of the test environment)
import pytest

from kascade.serving import config, server
from kascade.serving.runtimes import llama_cpp as llama_runtime

pytestmark = pytest.mark.serving

PROMPTS = [
    "Name three colors.",
    "What is the capital of France?",
    "Say hello in Spanish.",
    "Write one sentence about the sea.",
    "What is 7 times 6?",
    "Name a fruit that is yellow.",
    "Give me a word that rhymes with cat.",
    "What do bees make?",
]


@pytest.fixture(scope="module")
def chat() -> Iterator[server.ChatServer]:
    pool = config.PoolServingConfig.from_args(
        {
            "name": "batched",
            "model": {"source": "builtin://smollm2-135m-instruct", "contextLength": 256},
            "resources": {"cpu": 2},
            "capacity": {"maxConcurrentPerReplica": 8, "maxQueuedPerReplica": 0},
            "confidenceMethod": "mean-token-prob",
        }
    )
    srv = server.load_server(pool=pool)
    yield srv
    srv.close()


async def _post(chat: server.ChatServer, prompt: str, **body: Any) -> server.Reply:
    body["messages"] = [{"role": "user", "content": prompt}]
    return await chat.handle(
        method="POST", path="/v1/chat/completions", body=json.dumps(body).encode()
    )


async def _answer(chat: server.ChatServer, prompt: str, max_tokens: int) -> tuple[str, int, float]:
    reply = await _post(chat, prompt, temperature=0, max_tokens=max_tokens)
    assert isinstance(reply, server.JsonReply)
    assert reply.status == 200, reply.body
    return (
        reply.body["choices"][0]["message"]["content"],
        reply.body["usage"]["completion_tokens"],
        reply.body["confidence"],
    )


async def test_eight_concurrent_requests_each_get_their_own_answer(
    chat: server.ChatServer,
) -> None:
    assert chat.runtime.parallel == 8
    budgets = [4 + i for i in range(len(PROMPTS))]
    alone = [await _answer(chat, p, n) for p, n in zip(PROMPTS, budgets, strict=True)]
    together = await asyncio.gather(
        *(_answer(chat, p, n) for p, n in zip(PROMPTS, budgets, strict=True))
    )
    assert len({text for text, _, _ in alone}) == len(PROMPTS)  # distinct answers to compare
    for (text, tokens, conf), (b_text, b_tokens, b_conf), budget in zip(
        alone, together, budgets, strict=True
    ):
        assert b_text == text
        assert b_tokens == tokens <= budget
        # Each sequence's logits row is computed in a batch with other rows; llama.cpp's
        # CPU kernels may round a row differently with other rows beside it, which moves
        # a probability in its last float digits but (checked: text and count above) no
        # greedy choice. The tolerance is that rounding, not a different answer.
        assert b_conf == pytest.approx(conf, abs=1e-4)


async def _held_stream(chat: server.ChatServer, prompt: str) -> server.StreamReply:
    reply = await _post(chat, prompt, temperature=0, max_tokens=200, stream=True)
    assert isinstance(reply, server.StreamReply)
    assert (await anext(reply.chunks)).startswith(b"data: ")  # admitted and started
    return reply


async def test_a_cancelled_stream_frees_its_sequence_for_the_next_request() -> None:
    pool = config.PoolServingConfig.from_args(
        {
            "name": "two",
            "model": {"source": "builtin://smollm2-135m-instruct", "contextLength": 256},
            "resources": {"cpu": 2},
            "capacity": {"maxConcurrentPerReplica": 2, "maxQueuedPerReplica": 0},
        }
    )
    srv = server.load_server(pool=pool)
    runtime = srv.runtime
    assert isinstance(runtime, llama_runtime.LlamaCppRuntime)
    try:
        kept = await _held_stream(srv, "Count from 1 to 100.")
        dropped = await _held_stream(srv, "List the days of the week.")
        full = await _post(srv, "Hi", temperature=0, max_tokens=2)
        assert isinstance(full, server.JsonReply)
        assert full.status == 429  # both slots taken
        await anext(dropped.chunks)  # generating now
        await dropped.chunks.aclose()  # the client went away
        # Poll: the sequence leaves the batch on the engine thread, which has no event
        # to await. The kept stream holds its slot throughout (it is never closed here).
        while srv.generating != 1 or runtime.live_sequences > 1:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        text, tokens, _ = await _answer(srv, "What do bees make?", 3)
        assert tokens == 3
        assert text
        assert srv.generating == 1  # the kept stream still holds the other slot
        await kept.chunks.aclose()
        while srv.generating or runtime.live_sequences:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    finally:
        await asyncio.to_thread(srv.close)
