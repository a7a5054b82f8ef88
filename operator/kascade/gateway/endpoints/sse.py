"""Server-sent events in the OpenAI `chat.completion.chunk` shape."""

from __future__ import annotations

import json
from typing import Any


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
