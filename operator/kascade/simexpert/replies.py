"""Tool calls and structured answers of the simulated expert, in the OpenAI and the
Anthropic dialect, as JSON and as SSE.

Deterministic like the rest of the simulator: a request that offers tools gets a call
of the forced tool (else the first one) whose arguments are an instance of the tool's
JSON Schema built from the last user message; a request whose last turn returns tool
results gets a text answer quoting them; a json_schema response_format gets an instance
of the schema as its text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kascade.api import wire

_MAX_DEPTH = 8


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass(frozen=True)
class Plan:
    """What to answer: a text that replaces the echo (None keeps it) and tool calls."""

    text: str | None = None
    calls: tuple[ToolCall, ...] = ()


def example(
    schema: object, *, text: str, defs: dict[str, Any] | None = None, depth: int = 0
) -> Any:
    """A deterministic instance of a JSON Schema: strings are `text`, numbers 1, the
    first enum value, one array item, every property of an object."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return text
    defs = {**(defs or {}), **schema.get("$defs", {}), **schema.get("definitions", {})}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return example(defs.get(ref.rsplit("/", 1)[-1]), text=text, defs=defs, depth=depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key) or [] if o.get("type") != "null"]
        if options:
            return example(options[0], text=text, defs=defs, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: example(v, text=text, defs=defs, depth=depth + 1) for k, v in props.items()}
    if kind == "array":
        return [example(schema.get("items"), text=text, defs=defs, depth=depth + 1)]
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(str(kind), text)


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", p.get("content", ""))) for p in content if isinstance(p, dict)
        )
    return ""


def _off_schema(value: Any) -> Any:
    """A schema instance that no longer follows it: an object loses its first property
    (required, in the schemas clients derive from models) and gains one no schema
    names; anything else becomes an object."""
    if not isinstance(value, dict):
        return {"unexpected": value}
    broken = dict(list(value.items())[1:])
    broken["unexpected_property"] = True
    return broken


def _openai_plan(body: dict[str, Any], *, name: str, last: str, off: bool) -> Plan:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    if messages and messages[-1].get("role") == "tool":
        results = [_text(m.get("content")) for m in messages if m.get("role") == "tool"]
        return Plan(text=f"[{name}] tool said: {'; '.join(results)}")
    tools = [t.get("function") or {} for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if tools and choice != "none":
        forced = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        tool = next((t for t in tools if t.get("name") == forced), tools[0])
        return Plan(calls=(_call(tool.get("name"), tool.get("parameters"), last=last, off=off),))
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        instance = example((fmt.get("json_schema") or {}).get("schema"), text=last)
        return Plan(text=json.dumps(_off_schema(instance) if off else instance))
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return Plan(text=json.dumps({"answer": last}))
    return Plan()


def _anthropic_plan(body: dict[str, Any], *, name: str, last: str, off: bool) -> Plan:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    content = messages[-1].get("content") if messages else None
    blocks = content if isinstance(content, list) else []
    results = [
        _text(b.get("content"))
        for b in blocks
        if isinstance(b, dict) and b.get("type") == "tool_result"
    ]
    if results:
        return Plan(text=f"[{name}] tool said: {'; '.join(results)}")
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice") or {}
    if tools and choice.get("type") != "none":
        forced = choice.get("name") if choice.get("type") == "tool" else None
        tool = next((t for t in tools if t.get("name") == forced), tools[0])
        return Plan(calls=(_call(tool.get("name"), tool.get("input_schema"), last=last, off=off),))
    return Plan()


def _call(name: object, schema: object, *, last: str, off: bool = False) -> ToolCall:
    arguments = example(schema or {"type": "object"}, text=last)
    if off:
        arguments = _off_schema(arguments)
    return ToolCall(
        id="call_" + hashlib.blake2b(f"{name}\n{last}".encode(), digest_size=6).hexdigest(),
        name=str(name),
        arguments=arguments if isinstance(arguments, dict) else {"value": arguments},
    )


def plan(
    body: dict[str, Any], *, dialect: str, name: str, last: str, off_schema: bool = False
) -> Plan:
    """What the simulator answers to this request beyond its plain echo; ``off_schema``:
    tool arguments and structured answers break their schema (a provider that does not
    enforce it)."""
    if dialect == "anthropic":
        return _anthropic_plan(body, name=name, last=last, off=off_schema)
    return _openai_plan(body, name=name, last=last, off=off_schema)


def _pieces(text: str) -> list[str]:
    # Arguments arrive in a few fragments, as real providers stream them.
    step = max(1, len(text) // 3)
    return [text[i : i + step] for i in range(0, len(text), step)] or [""]


def openai_message(calls: tuple[ToolCall, ...]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments_json},
            }
            for c in calls
        ],
    }


def anthropic_content(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    return [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in calls]


Emit = Callable[[dict[str, Any]], Awaitable[None]]


async def openai_stream(emit: Emit, calls: tuple[ToolCall, ...]) -> None:
    """The tool-call deltas of an OpenAI stream (the caller writes the rest)."""
    for index, c in enumerate(calls):
        head = {
            "index": index,
            "id": c.id,
            "type": "function",
            "function": {"name": c.name, "arguments": ""},
        }
        delta: dict[str, Any] = {"tool_calls": [head]}
        if index == 0:
            delta = {"role": "assistant", "content": None, **delta}
        await emit(delta)
        for piece in _pieces(c.arguments_json):
            await emit({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})


async def anthropic_stream(
    event: Callable[[str, dict[str, Any]], Awaitable[None]], calls: tuple[ToolCall, ...]
) -> None:
    """The tool_use content blocks of an Anthropic stream."""
    for index, c in enumerate(calls):
        block = {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}
        await event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": block},
        )
        for piece in _pieces(c.arguments_json):
            delta = {"type": "input_json_delta", "partial_json": piece}
            await event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        await event("content_block_stop", {"type": "content_block_stop", "index": index})


async def respond(
    http: web.Request,
    *,
    dialect: str,
    calls: tuple[ToolCall, ...],
    rid: str,
    model: str,
    usage: tuple[int, int] | None,
    stream: bool,
    include_usage: bool,
    confidence: float | None,
) -> web.StreamResponse:
    """A tool-call answer in the request's dialect."""
    if dialect == "anthropic":
        if stream:
            return await _anthropic_sse(http, calls=calls, rid=rid, model=model, usage=usage)
        payload: dict[str, Any] = {
            "id": rid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": anthropic_content(calls),
            "stop_reason": "tool_use",
        }
        if usage is not None:
            payload["usage"] = {"input_tokens": usage[0], "output_tokens": usage[1]}
        return web.json_response(payload)
    headers = {} if confidence is None else {wire.CONFIDENCE_HEADER: f"{confidence}"}
    if stream:
        return await _openai_sse(
            http, calls=calls, rid=rid, model=model, usage=usage if include_usage else None,
            headers=headers,
        )  # fmt: skip
    choice = {"index": 0, "message": openai_message(calls), "finish_reason": "tool_calls"}
    payload = {"id": rid, "object": "chat.completion", "model": model, "choices": [choice]}
    if usage is not None:
        pt, ct = usage
        payload["usage"] = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
    if confidence is not None:
        payload[wire.CONFIDENCE_FIELD] = confidence
    return web.json_response(payload, headers=headers)


async def _openai_sse(
    http: web.Request,
    *,
    calls: tuple[ToolCall, ...],
    rid: str,
    model: str,
    usage: tuple[int, int] | None,
    headers: dict[str, str],
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", **headers})
    await resp.prepare(http)
    base = {"id": rid, "object": "chat.completion.chunk", "created": 0, "model": model}

    async def write(payload: dict[str, Any]) -> None:
        await resp.write(b"data: " + json.dumps(payload).encode() + b"\n\n")

    async def emit(delta: dict[str, Any]) -> None:
        await write({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

    await openai_stream(emit, calls)
    await write({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    if usage is not None:
        pt, ct = usage
        totals = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
        await write({**base, "choices": [], "usage": totals})
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _anthropic_sse(
    http: web.Request,
    *,
    calls: tuple[ToolCall, ...],
    rid: str,
    model: str,
    usage: tuple[int, int] | None,
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(http)

    async def event(kind: str, data: dict[str, Any]) -> None:
        await resp.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())

    start_usage = {"input_tokens": usage[0], "output_tokens": 0} if usage else {}
    message = {"id": rid, "type": "message", "role": "assistant", "model": model,
               "content": [], "usage": start_usage}  # fmt: skip
    await event("message_start", {"type": "message_start", "message": message})
    await anthropic_stream(event, calls)
    delta: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": "tool_use"}}
    if usage is not None:
        delta["usage"] = {"output_tokens": usage[1]}
    await event("message_delta", delta)
    await event("message_stop", {"type": "message_stop"})
    await resp.write_eof()
    return resp
