"""The ``vllm`` runtime: GPU serving through vLLM (the optional ``vllm`` extra).

vLLM is imported when this runtime is constructed, never at module import, so CPU
images need not install it. Log-probabilities come from vLLM itself
(``SamplingParams(logprobs=2)``: the sampled token plus the top two), which by default
are the raw model log-probabilities before temperature, matching the llama-cpp runtime.

Untested in CI (no GPU there): generation is whole-request (``LLM.generate``), then
replayed as steps, so streaming from this runtime delivers text only once it is done.
"""

from __future__ import annotations

import math
import pathlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from kascade.serving import confidence
from kascade.serving.runtimes import base

__all__ = ["VllmRuntime"]


class VllmRuntime:
    """One vLLM engine over one model (a GGUF file or a model directory)."""

    def __init__(
        self,
        *,
        model_path: pathlib.Path,
        context_length: int,
        gpu_fraction: float,
        chat_template: str | None = None,
    ) -> None:
        """Starts the engine; raises :class:`base.ModelLoadError` when vLLM is missing."""
        try:
            import vllm
        except ImportError:
            raise base.ModelLoadError(
                "model.runtime 'vllm' needs the vllm extra (pip install 'kascade[vllm]') "
                "on a GPU node"
            ) from None
        self._vllm: Any = vllm
        self._llm: Any = vllm.LLM(
            model=str(model_path),
            max_model_len=context_length,
            gpu_memory_utilization=min(0.9, max(0.1, gpu_fraction * 0.9)),
        )
        self._tokenizer: Any = self._llm.get_tokenizer()
        self._chat_template = chat_template
        self._context_length = context_length

    @property
    def parallel(self) -> int:
        """One: the synchronous ``LLM`` API is not thread-safe (batching across requests
        needs vLLM's async engine)."""
        return 1

    @property
    def context_length(self) -> int:
        """Tokens the context holds."""
        return self._context_length

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
        """Runs the whole request, then yields its tokens as steps."""
        sampling = self._vllm.SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            logprobs=2 if params.score else None,
        )
        outputs = self._llm.generate([{"prompt_token_ids": list(prompt)}], sampling, use_tqdm=False)
        completion = outputs[0].outputs[0]
        eos = self._tokenizer.eos_token_id
        step_logprobs = completion.logprobs or [None] * len(completion.token_ids)
        previous = ""
        for i, (token, top) in enumerate(zip(completion.token_ids, step_logprobs, strict=True)):
            if cancel.is_set():
                return
            score = _score(token=int(token), top=top) if top is not None else None
            if int(token) == eos:
                yield base.Step(token_id=int(token), text="", is_end=True, score=score)
                return
            text = self._tokenizer.decode(completion.token_ids[: i + 1])
            yield base.Step(
                token_id=int(token), text=text[len(previous) :], is_end=False, score=score
            )
            previous = text

    def close(self) -> None:
        """Drops the engine (vLLM frees GPU memory on garbage collection)."""
        self._llm = None


def _score(*, token: int, top: dict[int, Any]) -> confidence.TokenScore:
    # ``top`` maps token id -> Logprob(logprob, rank) for the sampled token and the top 2.
    ranked = sorted((math.exp(lp.logprob) for lp in top.values()), reverse=True)
    top1 = ranked[0] if ranked else 0.0
    top2 = ranked[1] if len(ranked) > 1 else 0.0
    return confidence.TokenScore(prob=math.exp(top[token].logprob), top1=top1, top2=top2)
