"""Runtime loading: lazy vLLM, clear load errors, GPU offload, vLLM logprob scoring."""

from __future__ import annotations

import collections
import importlib.util
import logging
import math
import pathlib
import subprocess
import sys

import pytest

from kascade.serving import config, runtimes, server
from kascade.serving.runtimes import base
from kascade.serving.runtimes import llama_cpp as llama_runtime

SMOLLM2 = "builtin://smollm2-135m-instruct"


def _offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def test_cpu_code_paths_never_import_vllm() -> None:
    code = (
        "import sys\n"
        "import kascade.serving.app, kascade.serving.server, kascade.serving.runtimes\n"
        "import kascade.serving.runtimes.llama_cpp, kascade.serving.runtimes.vllm\n"
        "assert 'vllm' not in sys.modules, 'vllm was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_pool_without_vllm_fails_with_an_actionable_message(tmp_path: pathlib.Path) -> None:
    pool = config.PoolServingConfig.from_args(
        {
            "name": "gpu",
            "model": {"runtime": "vllm", "source": f"file://{tmp_path}"},
            "resources": {"cpu": 4, "gpu": 1},
        }
    )
    with pytest.raises(base.ModelLoadError, match=r"needs the vllm extra .*kascade\[vllm\]"):
        runtimes.load_runtime(pool=pool, model_path=tmp_path)


def test_llama_cpp_rejects_a_file_that_is_not_gguf(tmp_path: pathlib.Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"this is not a gguf file" * 100)
    pool = config.PoolServingConfig.from_args(
        {"name": "cpu", "model": {"source": f"file://{bogus}"}}
    )
    with pytest.raises(base.ModelLoadError, match=r"llama.cpp could not load .*model.gguf"):
        runtimes.load_runtime(pool=pool, model_path=bogus)


# vLLM's per-step logprobs: {token_id: Logprob(logprob, rank, decoded_token)}.
Logprob = collections.namedtuple("Logprob", ["logprob", "rank", "decoded_token"])


def test_vllm_step_scores_from_top_logprobs() -> None:
    from kascade.serving.runtimes import vllm as vllm_runtime  # no vllm import at module level

    top = {
        5: Logprob(math.log(0.6), 1, "a"),
        9: Logprob(math.log(0.3), 2, "b"),
    }
    score = vllm_runtime._score(token=9, top=top)
    assert score.prob == pytest.approx(0.3)
    assert score.top1 == pytest.approx(0.6)
    assert score.top2 == pytest.approx(0.3)
    # A sampled token outside the top 2 comes as a third entry.
    top[42] = Logprob(math.log(0.05), 7, "c")
    outside = vllm_runtime._score(token=42, top=top)
    assert outside.prob == pytest.approx(0.05)
    assert (outside.top1, outside.top2) == (pytest.approx(0.6), pytest.approx(0.3))


@pytest.mark.parametrize(("gpu", "layers"), [(0, 0), (0.5, -1), (1, -1), (2, -1)])
def test_llama_offloads_every_layer_when_the_replica_has_a_gpu(gpu: float, layers: int) -> None:
    assert llama_runtime.gpu_layers(gpu=gpu, offload_supported=True) == layers


def test_llama_build_without_gpu_offload_refuses_a_gpu() -> None:
    assert llama_runtime.gpu_layers(gpu=0, offload_supported=False) == 0
    with pytest.raises(base.ModelLoadError, match=r"resources.gpu is 1 but .* cannot offload"):
        llama_runtime.gpu_layers(gpu=1, offload_supported=False)


@pytest.mark.serving
@pytest.mark.skipif(_offload_supported(), reason="this llama-cpp-python build can offload")
def test_a_llama_gpu_pool_does_not_load_on_a_cpu_only_build() -> None:
    pool = config.PoolServingConfig.from_args(
        {"name": "cpu", "model": {"source": SMOLLM2}, "resources": {"gpu": 1}}
    )
    with pytest.raises(base.ModelLoadError, match="cannot offload"):
        server.load_server(pool=pool)


@pytest.mark.serving
def test_a_loaded_llama_replica_logs_its_engine_settings(caplog: pytest.LogCaptureFixture) -> None:
    pool = config.PoolServingConfig.from_args(
        {
            "name": "cpu",
            "model": {"source": SMOLLM2, "contextLength": 512},
            "resources": {"cpu": 1},
            "capacity": {"maxConcurrentPerReplica": 3},
        }
    )
    with caplog.at_level(logging.INFO, logger="kascade.serving.server"):
        chat = server.load_server(pool=pool)
    try:
        # One context of contextLength x maxConcurrentPerReplica cells, contextLength per
        # sequence; no GPU, no offloaded layer.
        assert dict(chat.runtime.settings) == {
            "n_gpu_layers": 0,
            "n_ctx": 1536,
            "n_ctx_seq": 512,
            "n_seq_max": 3,
            "n_threads": 1,
        }
        assert "n_gpu_layers=0 n_ctx=1536 n_ctx_seq=512 n_seq_max=3 n_threads=1" in caplog.text
    finally:
        chat.close()


@pytest.mark.serving
def test_a_llama_gpu_replica_hands_every_layer_to_the_model_loader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import llama_cpp

    # This machine's build has no GPU backend: llama.cpp keeps the layers on the CPU,
    # but the loader receives the offload request (what a CUDA build acts on).
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    pool = config.PoolServingConfig.from_args(
        {"name": "cpu", "model": {"source": SMOLLM2, "contextLength": 256}, "resources": {"gpu": 1}}
    )
    chat = server.load_server(pool=pool)
    try:
        assert chat.runtime.settings["n_gpu_layers"] == -1
    finally:
        chat.close()
