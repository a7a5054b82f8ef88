"""Server-sent events in the OpenAI `chat.completion.chunk` shape."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aiohttp import web


def chunks_from_completion(completion: dict[str, Any]) -> list[bytes]:
    """A finished completion re-sent as a stream: role+content, finish, usage, [DONE]."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    raw_message = choice.get("message")
    message: dict[str, Any] = raw_message if isinstance(raw_message, dict) else {}
    base = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    content: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        # Stream deltas number the calls; the finished message lists them in order.
        content["content"] = message.get("content")
        content["tool_calls"] = [
            {**call, "index": i} for i, call in enumerate(calls) if isinstance(call, dict)
        ]
    first = {**base, "choices": [{"index": 0, "delta": content, "finish_reason": None}]}
    finish = choice.get("finish_reason") or "stop"
    last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
    out = [_event(first), _event(last)]
    if isinstance(completion.get("usage"), dict):
        out.append(_event({**base, "choices": [], "usage": completion["usage"]}))
    out.append(b"data: [DONE]\n\n")
    return out


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def error_event(*, code: str, message: str) -> bytes:
    """An OpenAI-style error event, sent when a stream cannot finish."""
    return _event({"error": {"message": message, "type": "server_error", "code": code}})


async def write_error_end(response: web.StreamResponse, *, code: str, expert: str) -> None:
    """Ends a started stream with an error event and [DONE] (the client may be gone)."""
    message = f"The stream from expert {expert} was cut by the gateway ({code})."
    with contextlib.suppress(OSError, RuntimeError):
        await response.write(error_event(code=code, message=message))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
