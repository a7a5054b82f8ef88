"""The ``llama-cpp`` runtime: GGUF models on CPU through llama-cpp-python.

Generation is driven token by token here instead of through ``create_completion``,
so log-probabilities cost one softmax over one logits row per generated token.
``create_completion(logprobs=...)`` needs ``logits_all=True``, which makes llama.cpp
compute (and llama-cpp-python copy) a vocabulary-sized row for every prompt position.
"""

from __future__ import annotations

import codecs
import ctypes
import datetime
import pathlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
import numpy as np
import numpy.typing as npt

from kascade.serving import confidence
from kascade.serving.runtimes import base

__all__ = ["LlamaCppRuntime"]


def _raise_exception(message: str) -> None:
    # Chat templates call raise_exception() to reject, e.g., unsupported roles.
    raise ValueError(message)


class LlamaCppRuntime:
    """One llama.cpp context over one GGUF file, driven by one thread at a time."""

    def __init__(
        self,
        *,
        model_path: pathlib.Path,
        context_length: int,
        n_threads: int,
        chat_template: str | None = None,
        logits_all: bool = False,
    ) -> None:
        """Loads the model. ``logits_all=True`` exists only to measure its cost."""
        import llama_cpp  # the serving extra; imported here so config/unit code needs none

        self._lib: Any = llama_cpp
        try:
            self._llm: Any = llama_cpp.Llama(
                model_path=str(model_path),
                n_ctx=context_length,
                n_batch=min(512, context_length),
                n_threads=n_threads,
                n_threads_batch=n_threads,
                logits_all=logits_all,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise base.ModelLoadError(f"llama.cpp could not load {model_path}: {exc}") from None
        self._context_length = context_length
        self._n_vocab = int(self._llm.n_vocab())
        self._vocab = self._llm._model.vocab
        self._ctx = self._llm._ctx.ctx
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
            self._template = env.from_string(template)
        except jinja2.TemplateError as exc:
            raise base.ModelLoadError(f"chat template does not parse: {exc}") from None

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

    def _last_logits(self) -> npt.NDArray[np.float32]:
        pointer = self._lib.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def generate(
        self, *, prompt: Sequence[int], params: base.SamplingParams, cancel: threading.Event
    ) -> Iterator[base.Step]:
        """Greedy at temperature 0, else temperature/top-p sampling from a seeded RNG."""
        if len(prompt) + params.max_tokens > self._context_length:
            raise ValueError(
                f"prompt ({len(prompt)}) + max_tokens ({params.max_tokens}) exceeds the "
                f"context ({self._context_length})"
            )
        rng = np.random.default_rng(params.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        grammar = None if params.json_schema is None else _Grammar(self, params.json_schema)
        self._llm.reset()
        self._llm.eval(list(prompt))
        try:
            for _ in range(params.max_tokens):
                if cancel.is_set():
                    return
                logits = self._last_logits()
                allowed = logits if grammar is None else grammar.mask(logits)
                token = _pick(logits=allowed, params=params, rng=rng)
                # Scored on the raw logits: confidence describes the model, not the grammar.
                score = (
                    confidence.score_logits(logits=logits, token=token) if params.score else None
                )
                if grammar is not None:
                    grammar.accept(token)
                if self._lib.llama_vocab_is_eog(self._vocab, token):
                    yield base.Step(token_id=token, text="", is_end=True, score=score)
                    return
                text = decoder.decode(self._piece(token))
                yield base.Step(token_id=token, text=text, is_end=False, score=score)
                self._llm.eval([token])
        finally:
            if grammar is not None:
                grammar.close()

    def close(self) -> None:
        """Frees the llama.cpp model and context."""
        self._llm.close()


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


def _pick(
    *, logits: npt.NDArray[np.float32], params: base.SamplingParams, rng: np.random.Generator
) -> int:
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
