"""The batch engine's layout of one decode, against a fake llama.cpp library.

llama.cpp computes a batch over per-sequence KV streams in micro-batches of sequences
whose ids follow each other in batch order; a batch out of ``seq_id`` order is split
into several computations (each reading all the weights again). These tests pin the
layout: ``seq_id`` order in the batch, and the lowest free ``seq_id`` for a new sequence.

They also pin prompt-prefix reuse: a sequence decodes only the part of its prompt its
``seq_id``'s cached cells do not hold, and a memory that cannot remove part of a
sequence (or has pruned cells) makes it evaluate the whole prompt.
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
    """Records each decode's (seq_id, token) layout and the positions each sequence's
    memory holds. ``gated``: each decode waits for the test. ``partial_rm=False``: the
    memory refuses to remove part of a sequence (as recurrent state does). ``window``:
    after a decode only the last ``window`` positions stay (sliding-window pruning)."""

    def __init__(
        self, *, gated: bool = True, partial_rm: bool = True, window: int | None = None
    ) -> None:
        self.decodes: list[list[tuple[int, int]]] = []
        self.positions: list[list[int]] = []
        self.kv: dict[int, set[int]] = {}
        self.removals: list[tuple[int, int, int]] = []
        self.gated = gated
        self.partial_rm = partial_rm
        self.window = window
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
        self.removals.append((seq_id, p0, p1))
        if p0 > 0 and not self.partial_rm:
            return False
        end = p1 if p1 >= 0 else 1 << 30
        self.kv[seq_id] = {p for p in self.kv.get(seq_id, set()) if not max(p0, 0) <= p < end}
        return True

    def llama_memory_seq_pos_min(self, mem: object, seq_id: int) -> int:
        return min(self.kv.get(seq_id) or {-1})

    def llama_memory_seq_pos_max(self, mem: object, seq_id: int) -> int:
        return max(self.kv.get(seq_id) or {-1})

    def llama_decode(self, ctx: Any, batch: _Batch) -> int:
        n = batch.n_tokens
        self.decodes.append([(batch.seq_id[i][0], batch.token[i]) for i in range(n)])
        self.positions.append([batch.pos[i] for i in range(n)])
        for i in range(n):
            held = self.kv.setdefault(batch.seq_id[i][0], set())
            held.add(batch.pos[i])
            if self.window is not None:
                held.difference_update({p for p in held if p <= max(held) - self.window})
        if self.gated:
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


def _consume(
    engine: llama_batch.BatchEngine, prompt: list[int], max_tokens: int
) -> threading.Thread:
    params = base.SamplingParams(max_tokens=max_tokens, temperature=0.0, score=False)
    thread = threading.Thread(
        target=lambda: list(
            engine.generate(prompt=prompt, params=params, cancel=threading.Event())
        ),
        daemon=True,
    )
    thread.start()
    return thread


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


def _engine(lib: _FakeLib, parallel: int = 2) -> llama_batch.BatchEngine:
    return llama_batch.BatchEngine(
        lib=lib, ctx=object(), n_vocab=N_VOCAB, vocab=_Vocab(), parallel=parallel, n_batch=64
    )


def _generate(engine: llama_batch.BatchEngine, prompt: list[int], max_tokens: int) -> int:
    params = base.SamplingParams(max_tokens=max_tokens, temperature=0.0, score=False)
    steps = engine.generate(prompt=prompt, params=params, cancel=threading.Event())
    return sum(1 for _ in steps)


def test_a_prompt_sharing_a_cached_prefix_decodes_only_its_suffix() -> None:
    lib = _FakeLib(gated=False)
    engine = _engine(lib)
    try:
        assert _generate(engine, [1, 2, 3, 4], max_tokens=2) == 2
        # seq 0 now holds 1 2 3 4 and the first generated token (the second was never
        # decoded); the next prompt shares 1 2 3.
        assert _generate(engine, [1, 2, 3, 7, 8], max_tokens=1) == 1
        assert lib.decodes[-1] == [(0, 7), (0, 8)]
        assert lib.positions[-1] == [3, 4]
        assert lib.removals[-1] == (0, 3, -1)
        assert lib.kv[0] == {0, 1, 2, 3, 4}
        assert engine.reused_tokens == 3
    finally:
        engine.close()


def test_a_fully_cached_prompt_still_decodes_its_last_token() -> None:
    lib = _FakeLib(gated=False)
    engine = _engine(lib)
    try:
        _generate(engine, [1, 2, 3, 4], max_tokens=3)
        # The same prompt: all of it is cached, but the first token's logits must
        # come from a decode of its last token at its own position.
        _generate(engine, [1, 2, 3, 4], max_tokens=1)
        assert (lib.decodes[-1], lib.positions[-1]) == ([(0, 4)], [3])
        # A strict prefix of what is cached: the cells past it go, its last token again.
        _generate(engine, [1, 2], max_tokens=1)
        assert (lib.decodes[-1], lib.positions[-1]) == ([(0, 2)], [1])
        assert lib.removals[-1] == (0, 1, -1)
        assert lib.kv[0] == {0, 1}
    finally:
        engine.close()


def test_a_memory_refusing_partial_removal_evaluates_the_whole_prompt() -> None:
    lib = _FakeLib(gated=False, partial_rm=False)
    engine = _engine(lib)
    try:
        _generate(engine, [1, 2, 3, 4], max_tokens=2)
        _generate(engine, [1, 2, 3, 7], max_tokens=1)
        assert lib.removals[-2:] == [(0, 3, -1), (0, -1, -1)]
        assert (lib.decodes[-1], lib.positions[-1]) == (
            [(0, 1), (0, 2), (0, 3), (0, 7)],
            [0, 1, 2, 3],
        )
        assert engine.reused_tokens == 0
    finally:
        engine.close()


def test_pruned_cells_make_the_whole_prompt_evaluated() -> None:
    lib = _FakeLib(gated=False, window=3)  # positions 0 and 1 are gone after 0-4
    engine = _engine(lib)
    try:
        _generate(engine, [1, 2, 3, 4], max_tokens=2)
        _generate(engine, [1, 2, 3, 7], max_tokens=1)
        assert lib.removals[-1] == (0, -1, -1)
        assert lib.positions[-1] == [0, 1, 2, 3]
        assert engine.reused_tokens == 0
    finally:
        engine.close()


def test_a_sequence_takes_the_free_id_with_the_longest_cached_prefix() -> None:
    lib = _FakeLib()
    engine = _engine(lib, parallel=4)
    try:
        first = _consume(engine, [1, 2], max_tokens=2)  # seq_id 0
        _wait_decode(lib)
        second = _consume(engine, [3, 4], max_tokens=1)  # seq_id 1
        _wait_inbox(engine, 1)
        lib.gate.release()
        _wait_decode(lib)
        lib.gate.release()
        first.join(timeout=10)
        second.join(timeout=10)
        assert lib.decodes == [[(0, 1), (0, 2)], [(0, TOKEN), (1, 3), (1, 4)]]
        lib.gated = False
        _generate(engine, [3, 4, 9], max_tokens=1)  # shares 3 4 with seq_id 1 only
        assert lib.decodes[-1] == [(1, 9)]
        _generate(engine, [6], max_tokens=1)  # shares nothing: the lowest free id
        assert lib.decodes[-1] == [(0, 6)]
    finally:
        lib.gated = False
        for _ in range(32):
            lib.gate.release()
        engine.close()


def test_prefix_reuse_never_splits_the_live_ids_into_more_runs() -> None:
    lib = _FakeLib()
    engine = _engine(lib, parallel=4)
    try:
        _consume(engine, [1, 2], max_tokens=10)  # seq_id 0, lives on
        _wait_decode(lib)
        _consume(engine, [3, 4], max_tokens=1)  # seq_id 1, leaves after one decode
        _consume(engine, [5, 6], max_tokens=1)  # seq_id 2, likewise
        _wait_inbox(engine, 2)
        lib.gate.release()
        _wait_decode(lib)  # they leave when it returns: 1 and 2 free, 2 holding 5 6
        assert lib.decodes[1] == [(0, TOKEN), (1, 3), (1, 4), (2, 5), (2, 6)]
        _consume(engine, [5, 6, 9], max_tokens=1)  # admitted after that decode
        _wait_inbox(engine, 1)
        lib.gate.release()
        _wait_decode(lib)
        # seq_id 2 would save two tokens once but leave a gap at 1: live ids 0 and 2
        # are two micro-batches at every step. The lowest free id keeps one run.
        assert lib.decodes[2] == [(0, TOKEN), (1, 5), (1, 6), (1, 9)]
    finally:
        lib.gated = False
        for _ in range(32):
            lib.gate.release()
        engine.close()
