"""The model server: HTTP semantics without an HTTP framework.

:class:`ChatServer` maps (method, path, body) to a :class:`JsonReply` or a
:class:`StreamReply`. The Ray Serve deployment in :mod:`kascade.serving.app` only
adapts those to Starlette responses, so everything here is testable without Ray.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

from kascade.api import wire
from kascade.serving import admission, config, generation, protocol
from kascade.serving.runtimes import base

__all__ = ["ChatServer", "JsonReply", "Reply", "StreamReply"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class JsonReply:
    """A complete JSON response."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamReply:
    """A 200 server-sent-events response; ``chunks`` are complete SSE events."""

    chunks: AsyncGenerator[bytes, None]
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


Reply = JsonReply | StreamReply


def _error_reply(error: protocol.ApiError) -> JsonReply:
    headers = {}
    if error.retry_after_s is not None:
        headers["retry-after"] = str(error.retry_after_s)
    return JsonReply(status=error.status, body=protocol.error_body(error), headers=headers)


class ChatServer:
    """One replica's request handling over one runtime's parallel sequences (slots)."""

    def __init__(self, *, pool: config.PoolServingConfig, runtime: base.Runtime) -> None:
        self._pool = pool
        self._runtime = runtime
        # One thread per slot consumes that slot's steps (the runtime blocks on them).
        self._executors = [
            concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"slot{i}")
            for i in range(runtime.parallel)
        ]
        self._admission = admission.Admission(
            slots=runtime.parallel,
            max_queued=pool.capacity.max_queued_per_replica,
            max_wait_s=pool.capacity.max_queue_wait_millis / 1000,
        )
        self._closed = False
        # Cancel flags of generations in progress, so close() can stop them: a replica
        # shutting down must not wait for long completions nobody will read.
        self._active: weakref.WeakSet[threading.Event] = weakref.WeakSet()
        self._streams_left = 0

    @property
    def streams_left(self) -> int:
        """Streams whose client left before the end (their generation was stopped early):
        the record that a hang-up reached this server instead of running to the end."""
        return self._streams_left

    @property
    def pool(self) -> config.PoolServingConfig:
        """The config this server was built from."""
        return self._pool

    @property
    def runtime(self) -> base.Runtime:
        """The loaded runtime."""
        return self._runtime

    @property
    def generating(self) -> int:
        """Generations running now (what admission counts as in flight)."""
        return self._admission.in_flight

    def check_health(self) -> None:
        """Raises when the replica cannot serve (Ray Serve then restarts it)."""
        if self._closed:
            raise RuntimeError(f"pool {self._pool.name}: server is closed")

    def close(self) -> None:
        """Frees the runtimes and their threads."""
        self._closed = True
        for cancel in list(self._active):
            cancel.set()
        for executor in self._executors:
            executor.shutdown(wait=True, cancel_futures=True)
        self._runtime.close()

    async def handle(self, *, method: str, path: str, body: bytes) -> Reply:
        """Routes one request; never raises for client errors (they become replies)."""
        try:
            if path == "/healthz":
                self._require(method, "GET", path)
                self.check_health()
                return JsonReply(status=200, body={"status": "ok", "model": self._pool.name})
            if path == "/v1/models":
                self._require(method, "GET", path)
                return JsonReply(status=200, body=self._models())
            if path == "/v1/chat/completions":
                self._require(method, "POST", path)
                return await self._chat(body)
            raise protocol.ApiError(
                status=404,
                message=f"no route {path}; served: POST /v1/chat/completions, "
                "GET /v1/models, GET /healthz",
                code="not_found",
            )
        except protocol.ApiError as exc:
            return _error_reply(exc)

    @staticmethod
    def _require(method: str, allowed: str, path: str) -> None:
        if method != allowed:
            raise protocol.ApiError(
                status=405,
                message=f"{method} is not allowed on {path}; use {allowed}",
                code="method_not_allowed",
            )

    def _models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self._pool.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "kascade",
                    "runtime": self._pool.model.runtime.value,
                    "context_length": self._pool.model.context_length,
                    wire.CONFIDENCE_METHOD_FIELD: self._pool.confidence_method.value,
                }
            ],
        }

    def _prepare(self, request: protocol.ChatRequest) -> tuple[list[int], base.SamplingParams]:
        runtime = self._runtime
        messages = [base.Message(role=m.role, content=m.text) for m in request.messages]
        try:
            prompt = runtime.prompt_tokens(messages=messages)
        except ValueError as exc:
            raise protocol.ApiError(
                status=400, message=f"messages cannot be formatted: {exc}", param="messages"
            ) from None
        context = runtime.context_length
        room = context - len(prompt)
        if room < 1:
            raise protocol.ApiError(
                status=400,
                message=f"the prompt is {len(prompt)} tokens; this model's context is "
                f"{context} tokens, which leaves no room for a completion",
                param="messages",
                code="context_length_exceeded",
            )
        wanted = request.requested_max_tokens
        if wanted is not None and wanted > room:
            raise protocol.ApiError(
                status=400,
                message=f"max_tokens is {wanted} but the prompt is {len(prompt)} tokens and "
                f"the context is {context}: at most {room} tokens can be generated",
                param="max_tokens",
                code="context_length_exceeded",
            )
        params = base.SamplingParams(
            max_tokens=wanted or room,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            json_schema=request.json_schema,
        )
        return prompt, params

    async def _chat(self, body: bytes) -> Reply:
        request = protocol.parse_chat_request(body)
        prompt, params = self._prepare(request)
        lease = await self._admit()
        cancel = threading.Event()
        self._active.add(cancel)
        events = generation.run_generation(
            runtime=self._runtime,
            prompt=prompt,
            params=params,
            stops=request.stop_sequences,
            method=self._pool.confidence_method,
            cancel=cancel,
        )
        if not request.stream:
            return await self._complete(lease, events, cancel, prompt_tokens=len(prompt))
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        chunks = self._stream(
            lease=lease,
            events=events,
            cancel=cancel,
            prompt_tokens=len(prompt),
            include_usage=include_usage,
        )
        # A stream dropped before its first chunk never runs its finally block:
        # release the slot when the generator object goes away (release is idempotent).
        weakref.finalize(chunks, _release_later, asyncio.get_running_loop(), lease, cancel)
        method = self._pool.confidence_method.value
        return StreamReply(chunks=chunks, headers={protocol.CONFIDENCE_METHOD_HEADER: method})

    async def _admit(self) -> admission.Lease:
        """A generation slot, or 429 with Retry-After when the bounded queue is full."""
        try:
            return await self._admission.acquire()
        except admission.Saturated as exc:
            raise protocol.ApiError(
                status=429,
                message=f"{exc}; retry after {exc.retry_after_s}s",
                type="overloaded_error",
                code="replica_saturated",
                retry_after_s=exc.retry_after_s,
            ) from None

    async def _complete(
        self,
        lease: admission.Lease,
        events: Iterator[generation.Event],
        cancel: threading.Event,
        *,
        prompt_tokens: int,
    ) -> JsonReply:
        """Runs a non-streamed generation to its end on the lease's thread."""
        try:
            text, finished = await asyncio.get_running_loop().run_in_executor(
                self._executors[lease.slot], _collect, events
            )
        except Exception as exc:
            _log.exception("Generation failed pool=%s", self._pool.name)
            raise protocol.ApiError(
                status=500, message=f"generation failed: {exc}", type="server_error"
            ) from None
        finally:
            cancel.set()
            lease.release()
        conf = finished.confidence if finished.confidence is not None else 0.0
        method = self._pool.confidence_method.value
        headers = {
            protocol.CONFIDENCE_METHOD_HEADER: method,
            protocol.CONFIDENCE_HEADER: f"{conf:.6f}",
        }
        return JsonReply(
            status=200,
            body=protocol.completion_body(
                completion_id=f"chatcmpl-{uuid.uuid4().hex}",
                created=int(time.time()),
                model=self._pool.name,
                text=text,
                finish_reason=finished.finish_reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=finished.completion_tokens,
                confidence=conf,
                confidence_method=method,
                confidence_signals=finished.signals,
            ),
            headers=headers,
        )

    async def _stream(
        self,
        *,
        lease: admission.Lease,
        events: Iterator[generation.Event],
        cancel: threading.Event,
        prompt_tokens: int,
        include_usage: bool,
    ) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        executor = self._executors[lease.slot]
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = self._pool.name

        def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
            return protocol.chunk_body(
                completion_id=completion_id,
                created=created,
                model=model,
                delta=delta,
                finish_reason=finish,
            )

        ended = False
        try:
            yield protocol.sse_event(chunk({"role": "assistant", "content": ""}))
            while True:
                try:
                    event = await loop.run_in_executor(executor, next, events, None)
                except Exception as exc:
                    _log.exception("Generation failed pool=%s", self._pool.name)
                    error = protocol.ApiError(
                        status=500, message=f"generation failed: {exc}", type="server_error"
                    )
                    yield protocol.sse_event(protocol.error_body(error))
                    break
                if event is None:
                    break
                if isinstance(event, generation.TextDelta):
                    yield protocol.sse_event(chunk({"content": event.text}))
                    continue
                for part in self._finish(chunk, event, prompt_tokens, include_usage):
                    yield part
            ended = True
            yield protocol.sse_event("[DONE]")
        finally:
            # Reached on completion and on client disconnect. Nothing here may await:
            # under a cancelled anyio scope (Starlette's disconnect handling) every
            # await raises again and the slot would never come back. So: tell the model
            # thread to stop, close the generator on that thread, and release the slot
            # from the loop once the thread is done with it.
            cancel.set()
            closing = executor.submit(_close, events)
            closing.add_done_callback(lambda _: _call_soon(loop, lease.release))
            if not ended:
                self._streams_left += 1

    def _finish(
        self,
        chunk: Callable[..., dict[str, Any]],
        event: generation.Finished,
        prompt_tokens: int,
        include_usage: bool,
    ) -> list[bytes]:
        """The finishing chunk with the confidence, then the usage chunk if asked for."""
        parts = [protocol.sse_event(self._with_confidence(chunk({}, event.finish_reason), event))]
        if include_usage:
            usage = chunk({})
            usage["choices"] = []
            usage["usage"] = protocol.usage_body(
                prompt_tokens=prompt_tokens, completion_tokens=event.completion_tokens
            )
            parts.append(protocol.sse_event(usage))
        return parts

    def _with_confidence(self, final: dict[str, Any], event: generation.Finished) -> dict[str, Any]:
        """The finishing chunk carries the confidence, as the non-streamed body does."""
        final[wire.CONFIDENCE_FIELD] = event.confidence if event.confidence is not None else 0.0
        final[wire.CONFIDENCE_METHOD_FIELD] = self._pool.confidence_method.value
        if event.signals is not None:
            final[wire.CONFIDENCE_SIGNALS_FIELD] = event.signals
        return final


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    # Lease state belongs to the event loop thread; a closed loop has no slots to free.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def _release_later(
    loop: asyncio.AbstractEventLoop, lease: admission.Lease, cancel: threading.Event
) -> None:
    cancel.set()
    _call_soon(loop, lease.release)


def _collect(events: Iterator[generation.Event]) -> tuple[str, generation.Finished]:
    parts: list[str] = []
    for event in events:
        if isinstance(event, generation.Finished):
            return "".join(parts), event
        parts.append(event.text)
    raise RuntimeError("generation ended without a finish event")


def _close(events: Iterator[generation.Event]) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        close()


def load_server(*, pool: config.PoolServingConfig) -> ChatServer:
    """Resolves the pool's model source and loads the replica's runtime.

    Raises :class:`kascade.serving.sources.ModelSourceError` or
    :class:`kascade.serving.runtimes.base.ModelLoadError` with the source and reason.
    """
    # Imported here: the server module itself stays free of model and network code.
    from kascade.serving import runtimes, sources

    path = sources.resolve_source(source=pool.model.source, sha256=pool.model.sha256)
    runtime = runtimes.load_runtime(pool=pool, model_path=path)
    _log.info(
        "Loaded model pool=%s source=%s runtime=%s parallel=%d gpu=%g %s",
        pool.name,
        sources.redact_source(pool.model.source),
        pool.model.runtime.value,
        runtime.parallel,
        pool.resources.gpu,
        " ".join(f"{key}={value}" for key, value in runtime.settings.items()),
    )
    return ChatServer(pool=pool, runtime=runtime)
