"""The ``llama-cpp`` runtime: GGUF models on CPU through llama-cpp-python.

One model and one context per replica, shared by ``parallel`` sequences through
continuous batching (:mod:`kascade.serving.runtimes.llama_batch`): each sequence has
its own ``seq_id`` and KV cells (``contextLength`` each), and all of them advance in
one ``llama_decode`` per step. A replica with ``resources.gpu > 0`` offloads every layer
to the GPU (:func:`gpu_layers`); without one, none.

Generation is driven token by token through llama.cpp's low-level API instead of
``create_completion``, so log-probabilities cost one softmax over one logits row per
generated token. ``create_completion(logprobs=...)`` needs ``logits_all=True``, which
makes llama.cpp compute (and copy) a vocabulary-sized row for every prompt position.
"""

from __future__ import annotations

import ctypes
import datetime
import pathlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
import numpy as np
import numpy.typing as npt

from kascade.serving.runtimes import base, llama_batch

__all__ = ["LlamaCppRuntime", "gpu_layers"]

_N_BATCH = 512
"""Tokens per decode: prompt chunks beyond it are evaluated over several steps."""


def _raise_exception(message: str) -> None:
    # Chat templates call raise_exception() to reject, e.g., unsupported roles.
    raise ValueError(message)


def gpu_layers(*, gpu: float, offload_supported: bool) -> int:
    """llama.cpp's ``n_gpu_layers`` for a replica reserving ``gpu`` GPUs: all layers
    (``-1``) with a GPU, none (``0``) without.

    Raises :class:`base.ModelLoadError` when a GPU is reserved but this llama-cpp-python
    build cannot offload (a CPU-only build): the GPU would sit idle.
    """
    if gpu <= 0:
        return 0
    if not offload_supported:
        raise base.ModelLoadError(
            f"resources.gpu is {gpu:g} but this llama-cpp-python build cannot offload to a "
            "GPU (install a CUDA build of llama-cpp-python in the image, or set gpu to 0)"
        )
    return -1


class LlamaCppRuntime:
    """One llama.cpp context over one GGUF file, generating ``parallel`` sequences at once.

    :meth:`generate` may be called from up to ``parallel`` threads at the same time.
    """

    def __init__(
        self,
        *,
        model_path: pathlib.Path,
        context_length: int,
        n_threads: int,
        parallel: int = 1,
        gpu: float = 0.0,
        chat_template: str | None = None,
        logits_all: bool = False,
        n_batch: int = _N_BATCH,
    ) -> None:
        """Loads the model (offloaded to the GPU when ``gpu > 0``). ``logits_all=True``
        exists only to measure its cost; ``n_batch`` (tokens per decode) only to pin a
        batch shape in tests."""
        import llama_cpp  # the serving extra; imported here so config/unit code needs none

        self._lib: Any = llama_cpp
        self._parallel = parallel
        self._n_gpu_layers = gpu_layers(
            gpu=gpu, offload_supported=bool(llama_cpp.llama_supports_gpu_offload())
        )
        try:
            # The high-level object loads the weights and tokenizes; its own context is
            # minimal (generation runs in the batched context below).
            self._llm: Any = llama_cpp.Llama(
                model_path=str(model_path),
                n_ctx=_N_BATCH,
                n_batch=_N_BATCH,
                n_threads=1,
                n_gpu_layers=self._n_gpu_layers,
                verbose=False,
            )
            self._ctx_owner: Any = self._batched_context(
                context_length=context_length, n_threads=n_threads, n_batch=n_batch
            )
        except (ValueError, RuntimeError) as exc:
            raise base.ModelLoadError(f"llama.cpp could not load {model_path}: {exc}") from None
        self._context_length = context_length
        self._n_threads = n_threads
        self._n_vocab = int(self._llm.n_vocab())
        self._vocab = self._llm._model.vocab
        self._ctx = self._ctx_owner.ctx
        self._template = self._load_template(chat_template, model_path)
        self._engine = llama_batch.BatchEngine(
            lib=llama_cpp,
            ctx=self._ctx,
            n_vocab=self._n_vocab,
            vocab=_Vocab(self),
            parallel=parallel,
            n_batch=min(n_batch, context_length * parallel),
            logits_all=logits_all,
        )

    def _batched_context(self, *, context_length: int, n_threads: int, n_batch: int) -> Any:
        from llama_cpp import _internals

        params = self._lib.llama_context_default_params()
        # KV cells are split evenly over the sequences: each gets the whole contextLength.
        params.n_ctx = context_length * self._parallel
        params.n_seq_max = self._parallel
        params.kv_unified = False
        params.n_batch = params.n_ubatch = min(n_batch, params.n_ctx)
        params.n_threads = params.n_threads_batch = n_threads
        return _internals.LlamaContext(model=self._llm._model, params=params, verbose=False)

    def _load_template(self, chat_template: str | None, model_path: pathlib.Path) -> Any:
        metadata: dict[str, str] = dict(self._llm.metadata)
        template = chat_template or metadata.get("tokenizer.chat_template")
        if not template:
            raise base.ModelLoadError(
                f"{model_path} has no tokenizer.chat_template in its metadata; "
                "set model.chatTemplate"
            )
        self._bos = self._token_text(self._llm.token_bos())
        self._eos = self._token_text(self._llm.token_eos())
        self._add_bos = bool(self._lib.llama_vocab_get_add_bos(self._vocab))
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        try:
            return env.from_string(template)
        except jinja2.TemplateError as exc:
            raise base.ModelLoadError(f"chat template does not parse: {exc}") from None

    @property
    def parallel(self) -> int:
        """Sequences generated at once (one KV region each)."""
        return self._parallel

    @property
    def settings(self) -> Mapping[str, int | float | str]:
        """What this replica's resources and capacity chose, as llama.cpp reports it: GPU
        offload, KV cells of the context (``n_ctx`` = ``contextLength`` x ``parallel``)
        and of each sequence (``n_ctx_seq``), sequences, threads."""
        lib = self._lib
        return {
            "n_gpu_layers": self._loader_gpu_layers(),
            "n_ctx": int(lib.llama_n_ctx(self._ctx)),
            "n_ctx_seq": int(lib.llama_n_ctx_seq(self._ctx)),
            "n_seq_max": int(lib.llama_n_seq_max(self._ctx)),
            "n_threads": self._n_threads,
        }

    def _loader_gpu_layers(self) -> int:
        # As handed to llama.cpp's model loader; llama-cpp-python passes "every layer"
        # (-1) as INT32_MAX.
        layers = int(self._llm.model_params.n_gpu_layers)
        return -1 if layers >= 0x7FFFFFFF else layers

    @property
    def live_sequences(self) -> int:
        """Sequences holding KV cells now."""
        return self._engine.live

    @property
    def context_length(self) -> int:
        """Tokens the context holds."""
        return self._context_length

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._lib.llama_vocab_get_text(self._vocab, token)).decode(
            "utf-8", errors="replace"
        )

    def _piece(self, token: int) -> bytes:
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, size, 0, False)
            if n >= 0:
                return bytes(buf.raw[:n])
            size = -n  # llama.cpp returns the needed size, negated

    def prompt_tokens(self, *, messages: Sequence[base.Message]) -> list[int]:
        """Renders the chat template (with the generation prompt) and tokenizes it."""
        try:
            text = self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except jinja2.TemplateError as exc:
            raise ValueError(f"chat template failed: {exc}") from None
        add_bos = self._add_bos and not (self._bos and text.startswith(self._bos))
        return list(self._llm.tokenize(text.encode(), add_bos=add_bos, special=True))

    def generate(
        self, *, prompt: Sequence[int], params: base.SamplingParams, cancel: threading.Event
    ) -> Iterator[base.Step]:
        """Greedy at temperature 0, else temperature/top-p sampling from a seeded RNG."""
        if len(prompt) + params.max_tokens > self._context_length:
            raise ValueError(
                f"prompt ({len(prompt)}) + max_tokens ({params.max_tokens}) exceeds the "
                f"context ({self._context_length})"
            )
        grammar = None if params.json_schema is None else _Grammar(self, params.json_schema)
        return self._engine.generate(
            prompt=prompt, params=params, cancel=cancel, constraint=grammar
        )

    def close(self) -> None:
        """Stops the engine, then frees the context and the model."""
        self._engine.close()
        self._ctx_owner.close()
        self._llm.close()


class _Vocab:
    """The model vocabulary as the batch engine sees it."""

    def __init__(self, runtime: LlamaCppRuntime) -> None:
        self._runtime = runtime

    def is_end(self, token: int) -> bool:
        return bool(self._runtime._lib.llama_vocab_is_eog(self._runtime._vocab, token))

    def piece(self, token: int) -> bytes:
        return self._runtime._piece(token)


class _Grammar:
    """llama.cpp's grammar sampler over a GBNF grammar derived from a JSON Schema: it
    masks, at each step, the tokens that cannot continue JSON that follows the schema."""

    def __init__(self, runtime: LlamaCppRuntime, schema_json: str) -> None:
        lib = runtime._lib
        self._lib = lib
        try:
            grammar = lib.llama_grammar.LlamaGrammar.from_json_schema(schema_json, verbose=False)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ValueError(f"response_format schema cannot become a grammar: {exc}") from None
        self._sampler = lib.llama_sampler_init_grammar(
            runtime._vocab, grammar._grammar.encode(), grammar._root.encode()
        )
        if not self._sampler:
            raise ValueError("response_format schema gave a grammar llama.cpp rejected")
        n = runtime._n_vocab
        self._data = (lib.llama_token_data * n)()
        self._view = np.ctypeslib.as_array(self._data)
        self._ids = np.arange(n, dtype=np.int32)
        self._array = lib.llama_token_data_array(data=self._data, size=n, selected=-1, sorted=False)

    def mask(self, logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The logits with every token the grammar forbids at -inf."""
        n = logits.shape[0]
        self._view["id"] = self._ids
        self._view["logit"] = logits
        self._view["p"] = 0.0
        self._array.size = n
        self._array.selected = -1
        self._array.sorted = False
        self._lib.llama_sampler_apply(self._sampler, ctypes.byref(self._array))
        size = int(self._array.size)
        masked = np.full(n, -np.inf, dtype=np.float32)
        masked[self._view["id"][:size]] = self._view["logit"][:size]
        return masked

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            self._lib.llama_sampler_free(self._sampler)
            self._sampler = None
