"""The ``vllm`` runtime: GPU serving through vLLM's async engine (the optional ``vllm`` extra).

vLLM is imported when this runtime is constructed, never at module import, so CPU
images need not install it. One ``AsyncLLMEngine`` per replica runs on an event loop
of its own thread. Each :meth:`VllmRuntime.generate` call (one per admission slot,
``maxConcurrentPerReplica`` of them) submits one request to it and reads that request's
outputs as they come, so vLLM batches the replica's concurrent requests itself
(continuous batching, ``max_num_seqs = maxConcurrentPerReplica``) and text streams as
it is generated. ``resources.gpu > 1`` splits the model over that many GPUs
(``tensor_parallel_size``).

Log-probabilities come from vLLM itself (``SamplingParams(logprobs=2)``: the sampled
token plus the top two), which by default are the raw model log-probabilities before
temperature, matching the llama-cpp runtime.

Untested on a GPU in CI: the engine arguments and the replay of vLLM's outputs into
steps are tested against a stand-in engine (tests/unit/serving/test_serving_vllm.py).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import pathlib
import queue
import threading
import uuid
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from kascade.serving import confidence
from kascade.serving.runtimes import base

__all__ = ["VllmRuntime", "engine_args", "tensor_parallel_size"]

_T = TypeVar("_T")

_POLL_S = 0.05
"""How often a consumer waiting for the engine looks at its cancel flag."""

_END = object()
"""Put on a request's queue after its last output."""


def tensor_parallel_size(gpu: float) -> int:
    """GPUs one replica splits the model over: all it reserves (at least 1).

    vLLM shards a model over whole GPUs; a fraction above 1 has no meaning there.
    """
    if gpu <= 1:
        return 1
    if not float(gpu).is_integer():
        raise ValueError(f"resources.gpu {gpu} above 1 must be a whole number of GPUs for vllm")
    return int(gpu)


def engine_args(
    *, model_path: pathlib.Path, context_length: int, gpu: float, parallel: int
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.AsyncEngineArgs`` for one replica (pure)."""
    tensor_parallel = tensor_parallel_size(gpu)
    args: dict[str, Any] = {
        "model": str(model_path),
        "max_model_len": context_length,
        # A fraction of a GPU leaves the rest of its memory to other replicas.
        "gpu_memory_utilization": min(0.9, max(0.1, gpu * 0.9)),
        "tensor_parallel_size": tensor_parallel,
        # Admission hands the engine at most `parallel` requests at once; it runs them
        # in one batch.
        "max_num_seqs": parallel,
    }
    if tensor_parallel > 1:
        # Worker processes on the GPUs this Ray actor already holds; vLLM's Ray backend
        # would ask Ray for more GPUs.
        args["distributed_executor_backend"] = "mp"
    return args


class VllmRuntime:
    """One vLLM engine over one model (a GGUF file or a model directory), generating
    ``parallel`` requests at once: :meth:`generate` may be called from that many threads."""

    def __init__(
        self,
        *,
        model_path: pathlib.Path,
        context_length: int,
        gpu: float,
        parallel: int = 1,
        chat_template: str | None = None,
    ) -> None:
        """Starts the engine; raises :class:`base.ModelLoadError` when vLLM is missing or
        the model does not load."""
        try:
            import vllm
        except ImportError:
            raise base.ModelLoadError(
                "model.runtime 'vllm' needs the vllm extra (pip install 'kascade[vllm]') "
                "on a GPU node"
            ) from None
        self._vllm: Any = vllm
        self._parallel = parallel
        self._context_length = context_length
        self._chat_template = chat_template
        self._args = engine_args(
            model_path=model_path, context_length=context_length, gpu=gpu, parallel=parallel
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="vllm-engine", daemon=True
        )
        self._thread.start()
        try:
            self._engine, self._tokenizer = self._call(self._start())
        except Exception as exc:  # vLLM raises many kinds; the replica reports the reason
            self._stop_loop()
            raise base.ModelLoadError(f"vLLM could not load {model_path}: {exc}") from None

    async def _start(self) -> tuple[Any, Any]:
        # Built on the engine loop: the engine's output handling runs there.
        engine = self._vllm.AsyncLLMEngine.from_engine_args(
            self._vllm.AsyncEngineArgs(**self._args)
        )
        tokenizer = engine.get_tokenizer()
        if inspect.isawaitable(tokenizer):
            tokenizer = await tokenizer
        return engine, tokenizer

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def parallel(self) -> int:
        """Requests generated at once (``maxConcurrentPerReplica``)."""
        return self._parallel

    @property
    def context_length(self) -> int:
        """Tokens one request may hold (prompt plus completion)."""
        return self._context_length

    @property
    def settings(self) -> Mapping[str, int | float | str]:
        """The engine arguments chosen for this replica's resources and capacity."""
        keys = ("tensor_parallel_size", "max_num_seqs", "max_model_len", "gpu_memory_utilization")
        return {key: self._args[key] for key in keys}

    def prompt_tokens(self, *, messages: Sequence[base.Message]) -> list[int]:
        """Applies the tokenizer's chat template (or ``chatTemplate``) and tokenizes."""
        ids = self._tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            chat_template=self._chat_template,
            add_generation_prompt=True,
            tokenize=True,
        )
        return [int(i) for i in ids]

    def generate(
        self, *, prompt: Sequence[int], params: base.SamplingParams, cancel: threading.Event
    ) -> Iterator[base.Step]:
        """Submits one request and yields its tokens as the engine produces them."""
        if len(prompt) + params.max_tokens > self._context_length:
            raise ValueError(
                f"prompt ({len(prompt)}) + max_tokens ({params.max_tokens}) exceeds the "
                f"context ({self._context_length})"
            )
        sampling = self._vllm.SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            logprobs=2 if params.score else None,
        )
        return self._steps(prompt=list(prompt), sampling=sampling, cancel=cancel)

    def _steps(
        self, *, prompt: list[int], sampling: Any, cancel: threading.Event
    ) -> Iterator[base.Step]:
        outputs: queue.Queue[Any] = queue.Queue()
        request = {"prompt_token_ids": prompt}
        task = asyncio.run_coroutine_threadsafe(
            _produce(self._engine, request, sampling, uuid.uuid4().hex, outputs), self._loop
        )
        replay = Replay()
        try:
            while (output := _next_output(outputs, cancel)) is not _END:
                for step in replay.feed(output):
                    yield step
                    if step.is_end:
                        return
        finally:
            # Cancelling the request's task makes vLLM abort the request (free its slot
            # in the batch and its KV blocks) when it has not finished.
            task.cancel()

    def close(self) -> None:
        """Shuts the engine down and stops its loop."""
        shutdown = getattr(self._engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
        self._engine = None
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()


async def _produce(
    engine: Any, request: dict[str, Any], sampling: Any, request_id: str, outputs: queue.Queue[Any]
) -> None:
    """Puts each output of one request on ``outputs``, then :data:`_END` (or the error)."""
    try:
        async for output in engine.generate(request, sampling, request_id):
            outputs.put(output.outputs[0])
    except Exception as exc:  # handed to the consuming thread, which raises it
        outputs.put(exc)
        return
    outputs.put(_END)


def _next_output(outputs: queue.Queue[Any], cancel: threading.Event) -> Any:
    """The next output, :data:`_END` when cancelled; raises an engine error."""
    while not cancel.is_set():
        try:
            item = outputs.get(timeout=_POLL_S)
        except queue.Empty:
            continue
        if isinstance(item, Exception):
            raise item
        return item
    return _END


class Replay:
    """Turns vLLM's cumulative outputs of one request (``CompletionOutput``: all token
    ids, log-probabilities and text so far) into one step per new token."""

    def __init__(self) -> None:
        self._tokens = 0
        self._text = 0

    def feed(self, output: Any) -> list[base.Step]:
        """Steps for the tokens that are new in ``output``; the last one ends generation
        when vLLM stopped on an end token (``finish_reason == 'stop'``)."""
        ids = [int(t) for t in output.token_ids[self._tokens :]]
        tops = (output.logprobs or [])[self._tokens :]
        self._tokens += len(ids)
        ended = output.finish_reason == "stop" and bool(ids)
        # vLLM does not detokenize the end token, so the new text belongs to the tokens
        # before it; it is given to the last of them (text may lag a token, e.g. while a
        # multi-byte character is split). An end token alone brings no text.
        text = str(output.text)[self._text :]
        self._text += len(text)
        last_text = len(ids) - (2 if ended else 1)
        steps = []
        for i, token in enumerate(ids):
            top = tops[i] if i < len(tops) else None
            score = _score(token=token, top=top) if top is not None else None
            is_end = ended and i == len(ids) - 1
            piece = text if i == last_text else ""
            steps.append(base.Step(token_id=token, text=piece, is_end=is_end, score=score))
        return steps


def _score(*, token: int, top: Mapping[int, Any]) -> confidence.TokenScore:
    # ``top`` maps token id -> Logprob(logprob, rank) for the sampled token and the top 2.
    ranked = sorted((math.exp(lp.logprob) for lp in top.values()), reverse=True)
    top1 = ranked[0] if ranked else 0.0
    top2 = ranked[1] if len(ranked) > 1 else 0.0
    return confidence.TokenScore(prob=math.exp(top[token].logprob), top1=top1, top2=top2)
