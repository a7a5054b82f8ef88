"""The vllm runtime without a GPU: the engine arguments it builds from a pool, and its
threads-to-async-engine bridge driven by a stand-in ``vllm`` module (a scripted
``AsyncLLMEngine``), so concurrency, streaming order and aborts are what is tested, not
vLLM itself."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import pathlib
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any, ClassVar

import pydantic
import pytest

from kascade.serving import config, deployment, runtimes, server
from kascade.serving.runtimes import base
from kascade.serving.runtimes import vllm as vllm_runtime

EOS = 2
Logprob = collections.namedtuple("Logprob", ["logprob", "rank"])


def _pool(*, gpu: float, concurrent: int = 4) -> config.PoolServingConfig:
    return config.PoolServingConfig.from_args(
        {
            "name": "gpu",
            "model": {"runtime": "vllm", "source": "file:///m", "contextLength": 128},
            "resources": {"cpu": 4, "gpu": gpu},
            "capacity": {"maxConcurrentPerReplica": concurrent, "maxQueuedPerReplica": 0},
        }
    )


@pytest.mark.parametrize(
    ("gpu", "tensor_parallel"), [(0.5, 1), (1, 1), (2, 2), (4, 4)], ids=["half", "1", "2", "4"]
)
def test_engine_args_split_the_model_over_every_gpu(gpu: float, tensor_parallel: int) -> None:
    args = vllm_runtime.engine_args(
        model_path=pathlib.Path("/m"), context_length=4096, gpu=gpu, parallel=4
    )
    assert args["tensor_parallel_size"] == tensor_parallel
    assert args["max_num_seqs"] == 4
    assert args["max_model_len"] == 4096
    # Several GPUs: worker processes on the actor's own GPUs, not Ray-placed workers.
    assert ("distributed_executor_backend" in args) is (tensor_parallel > 1)
    if tensor_parallel > 1:
        assert args["distributed_executor_backend"] == "mp"


def test_gpu_memory_share_follows_a_fractional_gpu() -> None:
    half = vllm_runtime.engine_args(
        model_path=pathlib.Path("/m"), context_length=64, gpu=0.5, parallel=1
    )
    whole = vllm_runtime.engine_args(
        model_path=pathlib.Path("/m"), context_length=64, gpu=2, parallel=1
    )
    assert half["gpu_memory_utilization"] == pytest.approx(0.45)
    assert whole["gpu_memory_utilization"] == pytest.approx(0.9)


def test_a_fraction_of_gpus_above_one_is_refused() -> None:
    with pytest.raises(ValueError, match="whole number"):
        vllm_runtime.tensor_parallel_size(1.5)
    with pytest.raises(pydantic.ValidationError, match="whole GPUs"):
        _pool(gpu=1.5)


def test_a_vllm_replica_takes_max_concurrent_per_replica_requests() -> None:
    pool = _pool(gpu=1, concurrent=8)
    assert deployment.slot_count(pool) == 8
    autoscaling = deployment.deployment_options(
        config.PoolServingConfig.from_args({**pool.to_args(), "replicas": {"min": 1, "max": 3}})
    )["autoscaling_config"]
    assert autoscaling["target_ongoing_requests"] == 8


# --- a stand-in vllm module -------------------------------------------------------------


@dataclasses.dataclass
class _Completion:
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    text: str
    finish_reason: str | None


@dataclasses.dataclass
class _Output:
    outputs: list[_Completion]


class _Tokenizer:
    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> list[int]:
        # One token per character of the last message, so each request has its own prompt.
        return [ord(c) for c in messages[-1]["content"]]


class _Engine:
    """Echoes the prompt token by token (text ``<id>,``) then the end token. No request
    generates until ``together`` requests are in flight at once; a request whose prompt
    holds ``hold`` stops after its first token until it is cancelled."""

    together = 1
    hold = -1
    last: ClassVar[_Engine]

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = args
        self.in_flight = 0
        self.most_in_flight = 0
        self.aborted: list[str] = []
        self._all_in: asyncio.Event | None = None

    @classmethod
    def from_engine_args(cls, args: types.SimpleNamespace) -> _Engine:
        engine = cls(vars(args))
        _Engine.last = engine
        return engine

    async def get_tokenizer(self) -> _Tokenizer:
        return _Tokenizer()

    async def generate(
        self, request: dict[str, list[int]], sampling: Any, request_id: str
    ) -> AsyncIterator[_Output]:
        self._all_in = self._all_in or asyncio.Event()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight >= self.together:
            self._all_in.set()
        try:
            # Deadline for the observable condition: fails instead of hanging.
            await asyncio.wait_for(self._all_in.wait(), timeout=10)
            ids: list[int] = []
            for token in request["prompt_token_ids"]:
                ids.append(token)
                yield self._output(ids, sampling, finish=None)
                if token == self.hold:
                    await asyncio.Event().wait()  # until cancelled
            yield self._output([*ids, EOS], sampling, finish="stop")
        except asyncio.CancelledError:
            self.aborted.append(request_id)
            raise
        finally:
            self.in_flight -= 1

    @staticmethod
    def _output(ids: list[int], sampling: Any, *, finish: str | None) -> _Output:
        text = "".join(f"{t}," for t in ids if t != EOS)
        logprobs = None
        if sampling.logprobs:
            logprobs = [{t: Logprob(math.log(0.5), 1), 0: Logprob(math.log(0.25), 2)} for t in ids]
        return _Output([_Completion(list(ids), logprobs, text, finish)])


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[_Engine]:
    module = types.ModuleType("vllm")
    module.AsyncEngineArgs = types.SimpleNamespace  # type: ignore[attr-defined]
    module.AsyncLLMEngine = _Engine  # type: ignore[attr-defined]
    module.SamplingParams = types.SimpleNamespace  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(_Engine, "together", 1)
    monkeypatch.setattr(_Engine, "hold", -1)
    return _Engine


@pytest.fixture
def loaded(fake_vllm: type[_Engine], request: pytest.FixtureRequest) -> Iterator[base.Runtime]:
    gpu, concurrent = request.param
    runtime = runtimes.load_runtime(
        pool=_pool(gpu=gpu, concurrent=concurrent), model_path=pathlib.Path("/m")
    )
    yield runtime
    runtime.close()


@pytest.mark.parametrize("loaded", [(2, 3)], indirect=True)
def test_load_runtime_builds_the_engine_from_the_pool(loaded: base.Runtime) -> None:
    args = _Engine.last.args
    assert (args["tensor_parallel_size"], args["max_num_seqs"], args["max_model_len"]) == (
        2,
        3,
        128,
    )
    assert loaded.parallel == 3
    assert dict(loaded.settings) == {
        "tensor_parallel_size": 2,
        "max_num_seqs": 3,
        "max_model_len": 128,
        "gpu_memory_utilization": 0.9,
    }


def _chat(content: str) -> bytes:
    return json.dumps(
        {"model": "gpu", "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    ).encode()


@pytest.mark.parametrize("loaded", [(1, 3)], indirect=True)
def test_a_replica_generates_its_concurrent_requests_together(
    loaded: base.Runtime, fake_vllm: type[_Engine]
) -> None:
    fake_vllm.together = 3  # each request waits in the engine until all three are in it
    chat = server.ChatServer(pool=_pool(gpu=1, concurrent=3), runtime=loaded)

    async def three() -> list[server.Reply]:
        return await asyncio.gather(
            *(chat.handle(method="POST", path="/v1/chat/completions", body=_chat(c)) for c in "abc")
        )

    replies = asyncio.run(three())
    assert [r.status for r in replies if isinstance(r, server.JsonReply)] == [200, 200, 200]
    texts = [
        r.body["choices"][0]["message"]["content"]
        for r in replies
        if isinstance(r, server.JsonReply)
    ]
    assert texts == ["97,", "98,", "99,"]
    assert _Engine.last.most_in_flight == 3
    usage = [
        r.body["usage"]["completion_tokens"] for r in replies if isinstance(r, server.JsonReply)
    ]
    assert usage == [1, 1, 1]  # the end token is not counted


@pytest.mark.parametrize("loaded", [(1, 1)], indirect=True)
def test_steps_stream_with_scores_and_stop_on_the_end_token(loaded: base.Runtime) -> None:
    params = base.SamplingParams(max_tokens=8)
    steps = list(loaded.generate(prompt=[5, 6], params=params, cancel=threading.Event()))
    assert [(s.token_id, s.text, s.is_end) for s in steps] == [
        (5, "5,", False),
        (6, "6,", False),
        (EOS, "", True),
    ]
    score = steps[0].score
    assert score is not None
    assert [score.prob, score.top1, score.top2] == pytest.approx([0.5, 0.5, 0.25])


@pytest.mark.parametrize("loaded", [(1, 1)], indirect=True)
def test_closing_a_generation_aborts_its_request(
    loaded: base.Runtime, fake_vllm: type[_Engine]
) -> None:
    fake_vllm.hold = 7
    steps = loaded.generate(
        prompt=[7, 8], params=base.SamplingParams(max_tokens=8), cancel=threading.Event()
    )
    assert isinstance(steps, Generator)
    first = next(steps)
    assert first.token_id == 7
    steps.close()  # what the server does when a stream's client leaves
    deadline = time.monotonic() + 10
    while not _Engine.last.aborted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_Engine.last.aborted) == 1
    assert _Engine.last.in_flight == 0


@pytest.mark.parametrize("loaded", [(1, 1)], indirect=True)
def test_a_cancelled_generation_stops_waiting(
    loaded: base.Runtime, fake_vllm: type[_Engine]
) -> None:
    fake_vllm.hold = 7
    cancel = threading.Event()
    steps = loaded.generate(prompt=[7, 8], params=base.SamplingParams(max_tokens=8), cancel=cancel)
    assert next(steps).token_id == 7
    cancel.set()
    assert list(steps) == []


def test_replay_gives_lagging_text_to_the_last_new_token() -> None:
    replay = vllm_runtime.Replay()
    # Two tokens arrive at once, the text of the first is held back (a split character).
    first = replay.feed(_Completion([10], None, "", None))
    both = replay.feed(_Completion([10, 11, 12], None, "é!", None))
    end = replay.feed(_Completion([10, 11, 12, EOS], None, "é!", "stop"))
    assert [(s.token_id, s.text) for s in first] == [(10, "")]
    assert [(s.token_id, s.text, s.is_end) for s in both] == [(11, "", False), (12, "é!", False)]
    assert [(s.token_id, s.text, s.is_end) for s in end] == [(EOS, "", True)]


def test_a_length_finish_ends_without_an_end_token() -> None:
    replay = vllm_runtime.Replay()
    steps = replay.feed(_Completion([10, 11], None, "ab", "length"))
    assert [(s.token_id, s.text, s.is_end) for s in steps] == [(10, "", False), (11, "ab", False)]


def test_an_engine_that_does_not_start_is_a_load_error(
    fake_vllm: type[_Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(args: types.SimpleNamespace) -> _Engine:
        raise ValueError("no config.json in /m")

    monkeypatch.setattr(fake_vllm, "from_engine_args", refuse)
    before = threading.active_count()
    with pytest.raises(base.ModelLoadError, match=r"vLLM could not load /m: no config.json"):
        runtimes.load_runtime(pool=_pool(gpu=1), model_path=pathlib.Path("/m"))
    assert threading.active_count() == before  # the engine loop thread was stopped
