"""The batch engine's layout of one decode, against a fake llama.cpp library.

llama.cpp computes a batch over per-sequence KV streams in micro-batches of sequences
whose ids follow each other in batch order; a batch out of ``seq_id`` order is split
into several computations (each reading all the weights again). These tests pin the
layout: ``seq_id`` order in the batch, and the lowest free ``seq_id`` for a new sequence.
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any

from kascade.serving.runtimes import base, llama_batch

N_VOCAB = 8
TOKEN = 5  # the fake model's greedy choice at every step


class _Batch:
    def __init__(self, n: int) -> None:
        self.token = [0] * n
        self.pos = [0] * n
        self.n_seq_id = [0] * n
        self.seq_id = [[0] for _ in range(n)]
        self.logits = [0] * n
        self.n_tokens = 0


class _FakeLib:
    """Records each decode's (seq_id, token) layout; each decode waits for the test."""

    def __init__(self) -> None:
        self.decodes: list[list[tuple[int, int]]] = []
        self.entered = threading.Semaphore(0)
        self.gate = threading.Semaphore(0)
        row = (ctypes.c_float * N_VOCAB)(*[0.0] * N_VOCAB)
        row[TOKEN] = 10.0
        self._row = row

    def llama_get_memory(self, ctx: Any) -> object:
        return object()

    def llama_batch_init(self, n: int, embd: int, n_seq_max: int) -> _Batch:
        return _Batch(n)

    def llama_batch_free(self, batch: _Batch) -> None:
        pass

    def llama_memory_seq_rm(self, mem: object, seq_id: int, p0: int, p1: int) -> bool:
        return True

    def llama_decode(self, ctx: Any, batch: _Batch) -> int:
        n = batch.n_tokens
        self.decodes.append([(batch.seq_id[i][0], batch.token[i]) for i in range(n)])
        self.entered.release()
        self.gate.acquire()
        return 0

    def llama_get_logits_ith(self, ctx: Any, index: int) -> Any:
        return ctypes.cast(self._row, ctypes.POINTER(ctypes.c_float))


class _Vocab:
    def is_end(self, token: int) -> bool:
        return False

    def piece(self, token: int) -> bytes:
        return b"x"


def _consume(engine: llama_batch.BatchEngine, prompt: list[int], max_tokens: int) -> None:
    params = base.SamplingParams(max_tokens=max_tokens, temperature=0.0, score=False)
    thread = threading.Thread(
        target=lambda: list(
            engine.generate(prompt=prompt, params=params, cancel=threading.Event())
        ),
        daemon=True,
    )
    thread.start()


def _wait_decode(lib: _FakeLib) -> None:
    assert lib.entered.acquire(timeout=10), "the engine did not decode"


def _wait_inbox(engine: llama_batch.BatchEngine, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(engine._inbox) < n:
        assert time.monotonic() < deadline, "the sequence never reached the engine"
        time.sleep(0.001)


def test_a_batch_is_laid_out_in_seq_id_order_and_reuses_the_lowest_free_id() -> None:
    lib = _FakeLib()
    engine = llama_batch.BatchEngine(
        lib=lib, ctx=object(), n_vocab=N_VOCAB, vocab=_Vocab(), parallel=4, n_batch=64
    )
    try:
        _consume(engine, [1], max_tokens=2)  # first: seq_id 0
        _wait_decode(lib)
        _consume(engine, [2], max_tokens=5)  # joins while the first runs: seq_id 1
        _wait_inbox(engine, 1)
        lib.gate.release()
        _wait_decode(lib)  # the first sequence's last token, the second's prompt
        _consume(engine, [3], max_tokens=5)  # admitted after the first leaves
        _wait_inbox(engine, 1)
        lib.gate.release()
        _wait_decode(lib)
        assert lib.decodes[0] == [(0, 1)]
        assert lib.decodes[1] == [(0, TOKEN), (1, 2)]
        # The third sequence joined the batch after the second, but took the freed id 0,
        # and comes first in the batch: ids 0, 1 in order are one micro-batch.
        assert lib.decodes[2] == [(0, 3), (1, TOKEN)]
    finally:
        for _ in range(32):
            lib.gate.release()
        engine.close()
