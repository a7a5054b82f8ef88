"""Serving benchmark: throughput with confidence on/off, logits_all cost, cold start.

Run: ``.venv/bin/python bench/serving.py`` (needs the serving extra). Prints progress,
then as its last line one JSON object with at least ``tokens_per_s_confidence_on``,
``tokens_per_s_confidence_off`` and ``cold_start_s``.

- Throughput is per replica: one runtime slot with the thread count a replica of
  ``--cpu`` cores gets, generating greedily; tokens/s = generated tokens / wall time
  of whole requests (prompt evaluation included). Confidence on and off alternate
  request by request, so background load on a shared machine hits both alike.
- ``logits_all`` runs the same loop on a model loaded with ``logits_all=True`` (what
  llama-cpp-python's own ``logprobs`` needs), on a long prompt where the cost shows
  (each request's message starts with its own number, so prefix reuse keeps only
  the system prompt and the rest is evaluated every time).
- Concurrency 1, 4 and 8 (:mod:`serving_concurrency`): one Kascade replica with
  ``maxConcurrentPerReplica`` 8 (continuous batching) against llama.cpp's own
  ``llama-server --parallel 8`` on the same model and threads, in the same run
  (built by ``bench/build-llama-server``; skipped with a note when it is absent).
  ``--quick`` runs short points and skips the logits_all and cold-start parts.
- Cold start is from ``serve.run`` (Ray already running; fresh application) to the first
  streamed token over HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import statistics
import sys
import threading
import time
from typing import Any

import httpx
import numpy as np

from kascade.serving import confidence, config, deployment, sources
from kascade.serving.runtimes import base, llama_cpp

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import serving_concurrency

PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Write a short poem about a lighthouse.",
    "List some tips for staying focused while studying.",
    "What are the main differences between cats and dogs?",
]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_once(
    *, runtime: llama_cpp.LlamaCppRuntime, prompt: list[int], max_tokens: int, score: bool
) -> tuple[int, float]:
    params = base.SamplingParams(max_tokens=max_tokens, temperature=0.0, score=score)
    started = time.perf_counter()
    tokens = sum(
        1 for _ in runtime.generate(prompt=prompt, params=params, cancel=threading.Event())
    )
    return tokens, time.perf_counter() - started


def throughput(*, pool: config.PoolServingConfig, rounds: int, max_tokens: int) -> dict[str, float]:
    """Tokens/s of one replica slot with confidence on and off (interleaved)."""
    path = sources.resolve_source(source=pool.model.source)
    runtime = llama_cpp.LlamaCppRuntime(
        model_path=path,
        context_length=pool.model.context_length,
        n_threads=deployment.llama_threads(pool),
    )
    prompts = [
        runtime.prompt_tokens(messages=[base.Message(role="user", content=p)]) for p in PROMPTS
    ]
    _run_once(runtime=runtime, prompt=prompts[0], max_tokens=8, score=True)  # warm up
    totals = {True: [0, 0.0], False: [0, 0.0]}
    per_round: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds):
        for prompt in prompts:
            # Alternate which goes first so drift in machine load cancels out.
            order = (True, False) if r % 2 == 0 else (False, True)
            for score in order:
                n, dt = _run_once(
                    runtime=runtime, prompt=prompt, max_tokens=max_tokens, score=score
                )
                totals[score][0] += n
                totals[score][1] += dt
                per_round[score].append(n / dt)
        _log(
            f"round {r + 1}/{rounds}: on={totals[True][0] / totals[True][1]:.1f} tok/s "
            f"off={totals[False][0] / totals[False][1]:.1f} tok/s"
        )
    n_vocab = int(runtime._n_vocab)
    runtime.close()
    on = totals[True][0] / totals[True][1]
    off = totals[False][0] / totals[False][1]
    us = scoring_cost_us(n_vocab=n_vocab)
    return {
        "confidence_us_per_token": round(us, 1),
        # What scoring costs per token, as a share of the measured time per token: the
        # stable figure when machine noise swamps the on/off difference.
        "confidence_cost_pct_from_us": round(100 * us * 1e-6 * off, 2),
        "tokens_per_s_confidence_on": round(on, 2),
        "tokens_per_s_confidence_off": round(off, 2),
        "confidence_cost_pct": round(100 * (off - on) / off, 2),
        "tokens_per_s_on_median_request": round(statistics.median(per_round[True]), 2),
        "tokens_per_s_off_median_request": round(statistics.median(per_round[False]), 2),
        "n_threads": deployment.llama_threads(pool),
    }


def scoring_cost_us(*, n_vocab: int, repeats: int = 2000) -> float:
    """Microseconds one :func:`confidence.score_logits` call takes on a vocab-sized row."""
    row = np.random.default_rng(0).normal(scale=3.0, size=n_vocab).astype(np.float32)
    for _ in range(50):
        confidence.score_logits(logits=row, token=1)
    started = time.perf_counter()
    for _ in range(repeats):
        confidence.score_logits(logits=row, token=1)
    return 1e6 * (time.perf_counter() - started) / repeats


def _numbered(runtime: llama_cpp.LlamaCppRuntime, text: str, i: int) -> list[int]:
    return runtime.prompt_tokens(messages=[base.Message(role="user", content=f"({i}) {text}")])


def logits_all_cost(*, pool: config.PoolServingConfig, rounds: int) -> dict[str, float]:
    """Same generation with ``logits_all=False`` (ours) and ``True``, on a long prompt."""
    path = sources.resolve_source(source=pool.model.source)
    long_prompt = "Summarise the following notes in one sentence.\n" + " ".join(
        f"Note {i}: the quarterly figures for region {i % 7} were revised." for i in range(20)
    )
    result: dict[str, float] = {}
    for logits_all in (False, True):
        runtime = llama_cpp.LlamaCppRuntime(
            model_path=path,
            context_length=pool.model.context_length,
            n_threads=deployment.llama_threads(pool),
            logits_all=logits_all,
        )
        # Each request's message starts differently, so prefix reuse keeps only the
        # system prompt and the whole note list is evaluated every time (the cost here).
        prompt = _numbered(runtime, long_prompt, 0)
        _run_once(runtime=runtime, prompt=prompt, max_tokens=4, score=True)
        tokens, seconds = 0, 0.0
        first_token_s: list[float] = []
        for r in range(rounds):
            first = _numbered(runtime, long_prompt, 2 * r + 1)
            _, dt1 = _run_once(runtime=runtime, prompt=first, max_tokens=1, score=True)
            first_token_s.append(dt1)
            full = _numbered(runtime, long_prompt, 2 * r + 2)
            n, dt = _run_once(runtime=runtime, prompt=full, max_tokens=64, score=True)
            tokens += n
            seconds += dt
        key = "logits_all" if logits_all else "last_row"
        result["prompt_tokens_long"] = len(prompt)
        result[f"time_to_first_token_ms_{key}"] = round(1000 * min(first_token_s), 1)
        result[f"tokens_per_s_long_prompt_{key}"] = round(tokens / seconds, 2)
        _log(
            f"{key}: {result[f'tokens_per_s_long_prompt_{key}']} tok/s, "
            f"first token {result[f'time_to_first_token_ms_{key}']} ms, prompt {len(prompt)} tokens"
        )
        runtime.close()
    return result


def cold_start(*, pool: config.PoolServingConfig) -> dict[str, float]:
    """Seconds from ``serve.run`` to the first streamed token, Ray already up."""
    import ray
    from ray import serve

    from kascade.serving import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    ray.init(
        num_cpus=max(2, int(pool.resources.cpu)),
        include_dashboard=False,
        object_store_memory=200_000_000,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        started = time.perf_counter()
        serve.run(app.build_app(pool), name=pool.name, route_prefix="/", blocking=False)
        ready = time.perf_counter() - started
        body = {
            "messages": [{"role": "user", "content": PROMPTS[0]}],
            "temperature": 0,
            "max_tokens": 16,
            "stream": True,
        }
        first_token = None
        with httpx.stream(
            "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120
        ) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if (
                    line.startswith("data: {")
                    and '"content":"' in line
                    and '"content":""' not in line
                ):
                    first_token = time.perf_counter() - started
                    break
        if first_token is None:
            raise RuntimeError("the stream delivered no token")
        # Through HTTP, for a sanity check against the in-process figures.
        n, t0 = 0, time.perf_counter()
        for prompt in PROMPTS:
            response = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": prompt}],
                    "temperature": 0,
                    "max_tokens": 96,
                },
                timeout=120,
            )
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
            r = response.json()
            n += r["usage"]["completion_tokens"]
        http_tps = n / (time.perf_counter() - t0)
    finally:
        serve.shutdown()
        ray.shutdown()
    _log(f"serve.run ready in {ready:.2f}s, first token at {first_token:.2f}s")
    return {
        "cold_start_s": round(first_token, 3),
        "serve_run_ready_s": round(ready, 3),
        "tokens_per_s_http_confidence_on": round(http_tps, 2),
    }


def concurrency(*, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """Kascade replica vs llama-server at concurrency 1, 4 and 8."""
    levels = [1, 4, 8]
    pool = config.PoolServingConfig.from_args(
        {
            "name": "bench-batched",
            "model": {"source": args.source, "contextLength": 512},
            "resources": {"cpu": args.cpu},
            "capacity": {"maxConcurrentPerReplica": 8, "maxQueuedPerReplica": 8},
        }
    )
    common = {"levels": levels, "seconds": seconds, "max_tokens": args.max_tokens}
    ours = serving_concurrency.kascade_sweep(pool=pool, **common)
    result: dict[str, Any] = {f"kascade_c{c}": v for c, v in ours.items()}
    result["tokens_per_s_c8"] = ours[8]["tokens_per_s"]
    binary = args.llama_server
    if not binary or not os.access(binary, os.X_OK):
        _log("llama-server not built (bench/build-llama-server): baseline skipped")
        return result
    theirs = serving_concurrency.llama_server_sweep(
        binary=binary,
        model=str(sources.resolve_source(source=args.source)),
        threads=deployment.llama_threads(pool),
        parallel=8,
        context_length=512,
        **common,
    )
    result.update({f"llama_server_c{c}": v for c, v in theirs.items()})
    result["llama_server_tokens_per_s_c8"] = theirs[8]["tokens_per_s"]
    result["ratio_c8"] = round(ours[8]["tokens_per_s"] / theirs[8]["tokens_per_s"], 3)
    return result


def _default_llama_server() -> str:
    import importlib.metadata

    version = importlib.metadata.version("llama-cpp-python")
    cache = pathlib.Path(os.environ.get("KASCADE_CACHE", pathlib.Path.home() / ".cache/kascade"))
    return str(cache / "bin" / f"llama-server-{version}" / "llama-server")


def main(argv: list[str] | None = None) -> int:
    """Runs the measurements; prints one JSON object as the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="builtin://smollm2-135m-instruct")
    parser.add_argument("--cpu", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0, help="per concurrency point")
    parser.add_argument("--llama-server", default=_default_llama_server())
    parser.add_argument("--quick", action="store_true", help="short points, fewer parts")
    args = parser.parse_args(argv)
    pool = config.PoolServingConfig.from_args(
        {
            "name": "bench",
            "model": {"source": args.source, "contextLength": 2048},
            "resources": {"cpu": args.cpu},
            "capacity": {"maxConcurrentPerReplica": 1, "maxQueuedPerReplica": 4},
        }
    )
    result: dict[str, Any] = {"source": args.source, "cpu": args.cpu, "quick": args.quick}
    rounds = 1 if args.quick else args.rounds
    result.update(throughput(pool=pool, rounds=rounds, max_tokens=args.max_tokens))
    result.update(concurrency(args=args, seconds=8.0 if args.quick else args.seconds))
    if not args.quick:
        result.update(logits_all_cost(pool=pool, rounds=max(3, args.rounds)))
        result.update(cold_start(pool=pool))
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
