"""Writing answers: JSON, SSE re-sent from a finished completion, the pool's SSE copied
through, and an expert's SSE translated on the fly."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web

from kascade.gateway.endpoints import errors, sse
from kascade.gateway.experts import escalation, providers
from kascade.gateway.route import decision as decision_mod
from kascade.gateway.route import local, request


def no_local_answer(d: decision_mod.Decision, *, detail: str) -> errors.ApiError:
    return errors.ApiError(
        status=503,
        message=f"Neither the local pool nor an expert could answer ({detail}).",
        type="server_error",
        code="no_answer",
    )


def expert_stream_writer(
    http: web.Request, d: decision_mod.Decision, streamed: list[web.StreamResponse]
) -> escalation.StreamWriter:
    async def write(
        upstream: aiohttp.ClientResponse,
        translator: providers.StreamTranslator,
        start: escalation.StreamStart,
    ) -> tuple[int | None, int | None]:
        d.route = f"expert:{start.expert}"
        # The actual cost is known only at the end: the header carries the reserved
        # worst case, the audit line and metrics the settled cost.
        d.cost_nanos = start.worst_case_nanos
        response = web.StreamResponse(headers=sse_headers(d))
        streamed.append(response)
        await response.prepare(http)
        async for line in upstream.content:
            out = translator.feed(line)
            if out is not None:
                await response.write(out)
        await response.write_eof()
        d.tool_calls = tuple(translator.tool_names)
        d.tool_arguments = tuple(translator.tool_arguments)
        return translator.prompt_tokens, translator.completion_tokens

    return write


def sse_headers(d: decision_mod.Decision) -> dict[str, str]:
    return {**d.headers(), "content-type": "text/event-stream", "cache-control": "no-cache"}


async def stream_local(
    session: aiohttp.ClientSession,
    http: web.Request,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    pool: Any,
) -> web.StreamResponse:
    try:
        async with local.open_stream(session=session, pool=pool, body=chat.body) as up:
            response = web.StreamResponse(headers=sse_headers(d))
            await response.prepare(http)
            # Tool calls are read from the copied lines only when tools were offered:
            # other streams stay a plain copy.
            watch = providers.StreamTranslator(provider="openai") if chat.tools else None
            pending = b""
            async for chunk in up.content.iter_any():
                await response.write(chunk)
                if watch is not None:
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        watch.feed(line)
            await response.write_eof()
            if watch is not None:
                d.tool_calls = tuple(watch.tool_names)
                d.tool_arguments = tuple(watch.tool_arguments)
            return response
    except local.Overflow as overflow:
        raise errors.ApiError(
            status=429,
            message="The local model pool is saturated; retry later.",
            type="rate_limit_error",
            code="pool_saturated",
            headers={"retry-after": str(max(1, round(overflow.retry_after or 1)))},
        ) from None
    except local.LocalFailure as failure:
        raise no_local_answer(d, detail=f"local pool: {failure.kind}") from None


async def respond(
    http: web.Request,
    chat: request.ChatRequest,
    d: decision_mod.Decision,
    *,
    completion: dict[str, Any],
    raw: bytes | None = None,
) -> web.StreamResponse:
    d.tool_calls, d.tool_arguments = providers.tool_calls_of(completion)
    if not chat.stream:
        return web.Response(
            body=raw if raw is not None else json.dumps(completion).encode(),
            content_type="application/json",
            headers=d.headers(),
        )
    response = web.StreamResponse(headers=sse_headers(d))
    await response.prepare(http)
    for chunk in sse.chunks_from_completion(completion):
        await response.write(chunk)
    await response.write_eof()
    return response
