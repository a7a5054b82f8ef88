"""Inference runtimes: ``llama-cpp`` (CPU, GGUF) and ``vllm`` (GPU, optional extra)."""

from __future__ import annotations

import pathlib

from kascade.serving import config, deployment, sources
from kascade.serving.runtimes import base

__all__ = ["load_runtime"]


def load_runtime(*, pool: config.PoolServingConfig, model_path: pathlib.Path) -> base.Runtime:
    """Loads the runtime of one replica of ``pool`` from a resolved weights file.

    Runtime modules are imported here, lazily: a CPU image never imports vLLM.
    """
    if pool.model.runtime is config.Runtime.VLLM:
        from kascade.serving.runtimes import vllm

        return vllm.VllmRuntime(
            model_path=model_path,
            context_length=pool.model.context_length,
            gpu=pool.resources.gpu,
            parallel=deployment.slot_count(pool),
            chat_template=pool.model.chat_template,
        )
    from kascade.serving.runtimes import llama_cpp

    template = pool.model.chat_template or sources.builtin_chat_template(pool.model.source)

    return llama_cpp.LlamaCppRuntime(
        model_path=model_path,
        context_length=pool.model.context_length,
        n_threads=deployment.llama_threads(pool),
        parallel=deployment.slot_count(pool),
        gpu=pool.resources.gpu,
        chat_template=template,
    )
