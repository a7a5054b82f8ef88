"""Continuous batching over one llama.cpp context: many sequences, one decode per step.

One engine thread owns the context. Each step it builds one ``llama_batch`` holding,
for every live sequence, either its next prompt chunk or the one token it sampled last,
each under the sequence's own ``seq_id`` (its own KV cells), and runs one
``llama_decode``. The logits row of each sequence's last batch position is then read,
scored and sampled for that sequence alone, and the step goes to the thread that
consumes that sequence. Sequences join between steps (no waiting for the batch to
drain) and leave the step they end or are cancelled, freeing their KV cells at once.

On a CPU the weights are read from memory once per decode whatever the batch holds, so
eight sequences cost far less than eight times one — provided the decode is one graph
computation. With a KV stream per sequence (``kv_unified = False``) llama.cpp splits a
batch into micro-batches of sequences whose ids follow each other (``seq_id`` n, n+1,
…) in batch order (``llama_batch_allocr::split_equal(sequential=true)``), and every
micro-batch reads all the weights again. So the batch is laid out in ``seq_id`` order,
and a sequence gets the lowest free ``seq_id``: live ids stay one run without gaps
(as llama-server's slots do), and eight generating sequences are one computation, not
up to eight.

A ``seq_id`` keeps its KV cells after its sequence leaves, with the tokens they hold,
so the next sequence there evaluates only what its prompt does not share with them
(chat templates and system prompts make long common prefixes): the cells from the
first differing position on are removed and the rest is reused. Among free ids a
sequence takes the one that reuses most without splitting the live ids into more runs
than the lowest free id would (ties to the lowest). A memory that cannot
remove part of a sequence (recurrent state, or sliding-window cells already pruned)
is cleared and the whole prompt evaluated. The last prompt token is always evaluated,
so the first generated token's logits come from this sequence's own decode.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from kascade.serving import confidence
from kascade.serving.runtimes import base

__all__ = ["BatchEngine", "Constraint", "EngineClosed", "Vocab"]

Logits = npt.NDArray[np.float32]


class EngineClosed(RuntimeError):
    """The engine was closed while a sequence was waiting or generating."""


class Constraint(Protocol):
    """Restricts which tokens a sequence may sample (e.g. a grammar)."""

    def mask(self, logits: Logits) -> Logits:
        """The logits with forbidden tokens at -inf."""
        ...

    def accept(self, token: int) -> None:
        """Advances the constraint past the sampled token."""
        ...

    def close(self) -> None:
        """Frees native state."""
        ...


class Vocab(Protocol):
    """What the engine needs from the model's vocabulary."""

    def is_end(self, token: int) -> bool:
        """The token ends generation."""
        ...

    def piece(self, token: int) -> bytes:
        """The token's bytes as output text."""
        ...


@dataclasses.dataclass(eq=False, kw_only=True)
class _Sequence:
    """One generation's state; touched only by the engine thread once submitted."""

    prompt: Sequence[int]
    params: base.SamplingParams
    cancel: threading.Event
    constraint: Constraint | None
    gone: threading.Event = dataclasses.field(default_factory=threading.Event)
    """Set when the consumer stops reading (the iterator was closed or finished)."""
    out: queue.SimpleQueue[base.Step | BaseException | None]
    seq_id: int = -1
    pending: list[int] = dataclasses.field(default_factory=list)
    n_past: int = 0
    produced: int = 0
    rng: np.random.Generator = dataclasses.field(default_factory=np.random.default_rng)
    decoder: Any = dataclasses.field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )


class BatchEngine:
    """Runs up to ``parallel`` sequences through one context on one thread."""

    def __init__(
        self,
        *,
        lib: Any,
        ctx: Any,
        n_vocab: int,
        vocab: Vocab,
        parallel: int,
        n_batch: int,
        logits_all: bool = False,
    ) -> None:
        """``ctx`` must have been created with ``n_seq_max >= parallel`` and one KV
        stream per sequence (``kv_unified = False``): the cells an idle ``seq_id`` keeps
        for prefix reuse then take no room from the others."""
        self._lib = lib
        self._ctx = ctx
        self._mem = lib.llama_get_memory(ctx)
        self._n_vocab = n_vocab
        self._vocab = vocab
        self._n_batch = n_batch
        self._logits_all = logits_all
        self._batch = lib.llama_batch_init(n_batch, 0, 1)
        self._free_ids = set(range(parallel))
        self._cached: list[list[int]] = [[] for _ in range(parallel)]
        """Per ``seq_id``: the tokens whose KV cells it holds, positions 0, 1, …"""
        self.reused_tokens = 0
        """Prompt tokens taken from cached cells instead of decoded (since start)."""
        self._inbox: collections.deque[_Sequence] = collections.deque()
        self._live: list[_Sequence] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="llama-batch", daemon=True)
        self._thread.start()

    @property
    def live(self) -> int:
        """Sequences holding KV cells now (generating or evaluating their prompt)."""
        return len(self._live)

    def generate(
        self,
        *,
        prompt: Sequence[int],
        params: base.SamplingParams,
        cancel: threading.Event,
        constraint: Constraint | None = None,
    ) -> Iterator[base.Step]:
        """Queues one sequence and yields its steps as the engine produces them.

        Closing the iterator early (the client went away) cancels the sequence, which
        then leaves the batch at the engine's next step.
        """
        seq = _Sequence(
            prompt=prompt,
            params=params,
            cancel=cancel,
            constraint=constraint,
            out=queue.SimpleQueue(),
            rng=np.random.default_rng(params.seed),
        )
        with self._wake:
            if self._closed:
                raise EngineClosed("the llama.cpp engine is closed")
            self._inbox.append(seq)
            self._wake.notify()
        try:
            while True:
                item = seq.out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            seq.gone.set()
            with self._wake:
                self._wake.notify()

    def close(self) -> None:
        """Stops the engine thread; sequences still running end without a finish."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        self._lib.llama_batch_free(self._batch)

    def _run(self) -> None:
        while True:
            with self._wake:
                self._reap()
                while self._inbox and self._free_ids:
                    self._admit(self._inbox.popleft())
                if self._closed:
                    break
                if not self._live:
                    self._wake.wait()
                    continue
            try:
                self._step()
            except Exception as exc:  # a decode failure ends every live sequence
                for seq in self._live:
                    seq.out.put(exc)
                    self._forget(seq.seq_id)  # what its cells hold is unknown now
                    self._drop(seq)
                self._live.clear()
        for seq in [*self._live, *self._inbox]:
            self._drop(seq)
            seq.out.put(None)
        self._live.clear()
        self._inbox.clear()

    def _admit(self, seq: _Sequence) -> None:
        if seq.cancel.is_set() or seq.gone.is_set():
            seq.out.put(None)
            return
        seq.seq_id = self._pick_slot(seq.prompt)
        self._free_ids.discard(seq.seq_id)
        reuse = self._keep_prefix(seq.seq_id, seq.prompt)
        self.reused_tokens += reuse
        seq.n_past = reuse
        seq.pending = list(seq.prompt[reuse:])
        self._live.append(seq)

    def _pick_slot(self, prompt: Sequence[int]) -> int:
        """The free ``seq_id`` whose cells share the longest prefix with ``prompt``, among
        those that split the live ids into no more runs than the lowest free id does
        (each run is one more read of all the weights, every step the sequence lives);
        the lowest on ties."""
        live = {seq.seq_id for seq in self._live}
        free = sorted(self._free_ids)
        limit = _runs(live | {free[0]})
        fits = [i for i in free if _runs(live | {i}) <= limit]
        return max(fits, key=lambda i: _common_prefix(self._cached[i], prompt))

    def _keep_prefix(self, seq_id: int, prompt: Sequence[int]) -> int:
        """Keeps the cells of ``seq_id`` that ``prompt`` begins with; returns their count.

        At most ``len(prompt) - 1``: the last prompt token is evaluated again so its
        logits (the first generated token's distribution) come from a decode.
        """
        cached = self._cached[seq_id]
        keep = min(_common_prefix(cached, prompt), max(len(prompt) - 1, 0))
        if keep < len(cached):
            removed = bool(self._lib.llama_memory_seq_rm(self._mem, seq_id, keep, -1))
            if not removed or not self._holds_exactly(seq_id, keep):
                # Partial removal unsupported (recurrent state) or cells pruned (sliding
                # window): start the sequence from an empty memory.
                self._lib.llama_memory_seq_rm(self._mem, seq_id, -1, -1)
                keep = 0
        del cached[keep:]
        return keep

    def _holds_exactly(self, seq_id: int, n: int) -> bool:
        """The memory holds positions 0 … n-1 of ``seq_id`` (nothing when n is 0)."""
        low = int(self._lib.llama_memory_seq_pos_min(self._mem, seq_id))
        high = int(self._lib.llama_memory_seq_pos_max(self._mem, seq_id))
        return (low, high) == ((0, n - 1) if n > 0 else (-1, -1))

    def _reap(self) -> None:
        # Cancelled sequences leave before the next decode: their KV cells and seq_id
        # are free for the next sequence within one step.
        for seq in [s for s in self._live if s.cancel.is_set() or s.gone.is_set()]:
            self._finish(seq)

    def _finish(self, seq: _Sequence) -> None:
        self._live.remove(seq)
        self._drop(seq)
        seq.out.put(None)

    def _forget(self, seq_id: int) -> None:
        if seq_id >= 0:
            self._lib.llama_memory_seq_rm(self._mem, seq_id, -1, -1)
            self._cached[seq_id].clear()

    def _drop(self, seq: _Sequence) -> None:
        # The cells stay (with ``_cached`` saying what they hold) for prefix reuse.
        if seq.seq_id >= 0:
            self._free_ids.add(seq.seq_id)
            seq.seq_id = -1
        if seq.constraint is not None:
            seq.constraint.close()
            seq.constraint = None

    def _step(self) -> None:
        """One decode over every live sequence; prompts are fed in chunks of the budget."""
        batch = self._batch
        # Sequences already generating get their share of the budget first: one token
        # each keeps them moving while a long prompt is evaluated over several steps.
        budget = self._n_batch
        takes: list[tuple[_Sequence, int]] = []
        for seq in sorted(self._live, key=lambda s: len(s.pending)):
            take = min(len(seq.pending), budget)
            if take > 0:
                takes.append((seq, take))
                budget -= take
        # Laid out in seq_id order: llama.cpp computes consecutive ids in one micro-batch.
        takes.sort(key=lambda item: item[0].seq_id)
        n = 0
        readers: list[tuple[_Sequence, int]] = []
        for seq, take in takes:
            last = len(seq.pending) - 1
            self._cached[seq.seq_id].extend(seq.pending[:take])
            for j, token in enumerate(seq.pending[:take]):
                batch.token[n] = token
                batch.pos[n] = seq.n_past + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq.seq_id
                batch.logits[n] = int(self._logits_all or j == last)
                n += 1
            seq.n_past += take
            del seq.pending[:take]
            if not seq.pending:
                readers.append((seq, n - 1))
        batch.n_tokens = n
        status = self._lib.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        for seq, index in readers:
            pointer = self._lib.llama_get_logits_ith(self._ctx, index)
            logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
            self._sample(seq, logits)

    def _sample(self, seq: _Sequence, logits: Logits) -> None:
        params = seq.params
        allowed = logits if seq.constraint is None else seq.constraint.mask(logits)
        token = pick(logits=allowed, params=params, rng=seq.rng)
        # Scored on the raw logits: confidence describes the model, not a constraint.
        score = confidence.score_logits(logits=logits, token=token) if params.score else None
        if seq.constraint is not None:
            seq.constraint.accept(token)
        seq.produced += 1
        if self._vocab.is_end(token):
            seq.out.put(base.Step(token_id=token, text="", is_end=True, score=score))
            self._finish(seq)
            return
        text = seq.decoder.decode(self._vocab.piece(token))
        seq.out.put(base.Step(token_id=token, text=text, is_end=False, score=score))
        if seq.produced >= params.max_tokens:
            self._finish(seq)
        else:
            seq.pending.append(token)


def _runs(ids: set[int]) -> int:
    """Maximal runs of consecutive ids: the micro-batches llama.cpp splits a batch into."""
    return sum(1 for i in ids if i - 1 not in ids)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def pick(*, logits: Logits, params: base.SamplingParams, rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else temperature/top-p sampling from ``rng``."""
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(probs)[::-1]
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[rng.choice(len(keep), p=kept)])
    return int(rng.choice(len(probs), p=probs))
