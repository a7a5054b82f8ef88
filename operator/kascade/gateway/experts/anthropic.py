"""The Anthropic Messages API dialect: an OpenAI chat-completions request translated
into a Messages request, and Messages answers (JSON and SSE) translated back.

What Anthropic cannot honour is refused (`Unsupported`, a 400 naming the parameter)
before anything is sent; a value that equals OpenAI's no-op default (logprobs false,
presence_penalty 0, ...) asks for nothing and is accepted. A `response_format` is
carried by one forced tool whose input is the answer (Anthropic's documented way to get
JSON that follows a schema); its input comes back as the message content.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

FORMAT_TOOL = "kascade_response_format"
"""The forced tool that carries a response_format answer."""

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}
# Parameters that ask for nothing when they hold these values (OpenAI's defaults).
_NO_OP: dict[str, tuple[object, ...]] = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logprobs": (False,),
    "store": (False,),
    "modalities": (["text"],),
    "metadata": ({},),
    "logit_bias": ({},),
}
_TRANSLATED = frozenset(
    {
        "temperature",
        "top_p",
        "stop",
        "user",
        "tools",
        "tool_choice",
        "response_format",
        "parallel_tool_calls",
        "max_completion_tokens",
    }
)
_DATA_URL = re.compile(r"^data:(image/(?:jpeg|png|gif|webp));base64,(.+)$", re.DOTALL)


class Unsupported(ValueError):
    """A parameter Anthropic cannot honour; `param` is its JSON path."""

    def __init__(self, *, param: str, reason: str) -> None:
        super().__init__(f"`{param}` {reason}")
        self.param = param
        self.reason = reason


def _text(content: object, *, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise Unsupported(
                    param=f"{where}[{j}].type", reason="must be 'text' in this message"
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    return ""


def check_params(params: dict[str, Any]) -> None:
    """Raises Unsupported for the first parameter Anthropic cannot honour."""
    for key, value in params.items():
        if key in _TRANSLATED:
            continue
        if key in _NO_OP and value in _NO_OP[key]:
            continue
        raise Unsupported(param=key, reason="is not supported by the Anthropic Messages API")
    temperature = params.get("temperature")
    if isinstance(temperature, int | float) and temperature > 1:
        raise Unsupported(param="temperature", reason="must be from 0 to 1 for Anthropic")
    fmt = params.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") != "text" and "tools" in params:
        raise Unsupported(
            param="response_format",
            reason="cannot be combined with tools for Anthropic (the format is a forced tool)",
        )
    for i, tool in enumerate(params.get("tools") or []):
        if tool["function"]["name"] == FORMAT_TOOL:
            raise Unsupported(
                param=f"tools[{i}].function.name",
                reason=f"'{FORMAT_TOOL}' is reserved for response_format with Anthropic",
            )
        if tool["function"].get("strict"):
            raise Unsupported(
                param=f"tools[{i}].function.strict",
                reason="(strict function calling) is not supported for Anthropic experts",
            )


def _image(part: dict[str, Any], *, where: str) -> dict[str, Any]:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else None
    if not isinstance(url, str):
        raise Unsupported(param=f"{where}.image_url.url", reason="must be a string")
    detail = spec.get("detail") if isinstance(spec, dict) else None
    if detail not in (None, "auto"):
        raise Unsupported(
            param=f"{where}.image_url.detail", reason="must be 'auto' for Anthropic experts"
        )
    match = _DATA_URL.match(url)
    if match is not None:
        source = {"type": "base64", "media_type": match.group(1), "data": match.group(2)}
        return {"type": "image", "source": source}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise Unsupported(
        param=f"{where}.image_url.url",
        reason="must be an http(s) URL or a base64 data URL of a jpeg, png, gif or webp image",
    )


def _user_blocks(content: object, *, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content if isinstance(content, list) else []):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            blocks.append(_image(part, where=f"{where}[{j}]"))
        else:
            raise Unsupported(
                param=f"{where}[{j}].type",
                reason="must be 'text' or 'image_url' for Anthropic experts",
            )
    return blocks


def _assistant_blocks(message: dict[str, Any], *, where: str) -> list[dict[str, Any]]:
    text = _text(message.get("content"), where=f"{where}.content")
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for j, call in enumerate(message.get("tool_calls") or []):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise Unsupported(param=at, reason="must be a function tool call")
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise Unsupported(
                param=f"{at}.function.arguments", reason="must be a JSON object for Anthropic"
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id", "")),
                "name": str(function.get("name", "")),
                "input": arguments,
            }
        )
    return blocks


def _tool_result(message: dict[str, Any], *, where: str) -> dict[str, Any]:
    return {
        "type": "tool_result",
        "tool_use_id": str(message.get("tool_call_id", "")),
        "content": _text(message.get("content"), where=f"{where}.content"),
    }


def messages(openai_messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(system text, Anthropic messages). Consecutive turns of one role are merged,
    since Anthropic requires user and assistant to alternate (tool results are user
    turns); a lone plain-text turn keeps its string content."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, m in enumerate(openai_messages):
        where = f"messages[{i}]"
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(_text(m.get("content"), where=f"{where}.content"))
            continue
        if role == "tool":
            turn, blocks = "user", [_tool_result(m, where=where)]
        elif role == "assistant":
            turn, blocks = "assistant", _assistant_blocks(m, where=where)
        else:
            turn, blocks = "user", _user_blocks(m.get("content"), where=f"{where}.content")
        content: str | list[dict[str, Any]] = blocks
        plain = isinstance(m.get("content"), str) and not m.get("tool_calls")
        if plain and role in ("user", "assistant"):
            content = str(m["content"])
        if out and out[-1]["role"] == turn:
            out[-1]["content"] = _as_blocks(out[-1]["content"]) + _as_blocks(content)
        else:
            out.append({"role": turn, "content": content})
    return "\n\n".join(system), out


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _tools(params: dict[str, Any], body: dict[str, Any]) -> None:
    tools = params.get("tools")
    fmt = params.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema") or {"type": "object"}
        tool = {
            "name": FORMAT_TOOL,
            "description": spec.get("description") or "Answer with this JSON object.",
            "input_schema": schema,
        }
        body["tools"] = [tool]
        body["tool_choice"] = {"type": "tool", "name": FORMAT_TOOL}
        return
    if not tools:
        return
    body["tools"] = [
        {
            "name": t["function"]["name"],
            **(
                {"description": t["function"]["description"]}
                if "description" in t["function"]
                else {}
            ),
            "input_schema": t["function"].get("parameters") or {"type": "object"},
        }
        for t in tools
    ]
    choice = params.get("tool_choice")
    translated: dict[str, Any] | None = None
    if choice == "auto":
        translated = {"type": "auto"}
    elif choice == "required":
        translated = {"type": "any"}
    elif choice == "none":
        translated = {"type": "none"}
    elif isinstance(choice, dict):
        translated = {"type": "tool", "name": choice["function"]["name"]}
    if params.get("parallel_tool_calls") is False and choice != "none":
        translated = {**(translated or {"type": "auto"}), "disable_parallel_tool_use": True}
    if translated is not None:
        body["tool_choice"] = translated


def request_body(
    *,
    model: str,
    openai_messages: list[dict[str, Any]],
    params: dict[str, Any],
    max_tokens: int,
    stream: bool,
) -> dict[str, Any]:
    """The Messages request; raises Unsupported before anything is built."""
    check_params(params)
    system, turns = messages(openai_messages)
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns}
    if system:
        body["system"] = system
    for key in ("temperature", "top_p"):
        if key in params:
            body[key] = params[key]
    if "stop" in params:
        stop = params["stop"]
        body["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    if "user" in params:
        body["metadata"] = {"user_id": params["user"]}
    _tools(params, body)
    if stream:
        body["stream"] = True
    return body


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def completion(
    data: dict[str, Any], *, blocks: list[Any]
) -> tuple[dict[str, Any], int | None, int | None]:
    """A Messages answer as an OpenAI chat.completion, with its reported usage."""
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    finish = _FINISH.get(str(data.get("stop_reason")), "stop")
    for b in blocks:
        if not isinstance(b, dict):
            continue
        if b.get("type") == "text":
            text.append(str(b.get("text", "")))
        elif b.get("type") == "tool_use" and b.get("name") == FORMAT_TOOL:
            text.append(json.dumps(b.get("input"), separators=(",", ":")))
        elif b.get("type") == "tool_use":
            calls.append(
                {
                    "id": str(b.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": str(b.get("name", "")),
                        "arguments": json.dumps(b.get("input"), separators=(",", ":")),
                    },
                }
            )
    if finish == "tool_calls" and not calls:  # only the format tool: a finished answer
        finish = "stop"
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    raw_usage = data.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    pt, ct = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
    body = {
        "id": str(data.get("id", "")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(data.get("model", "")),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": pt or 0,
            "completion_tokens": ct or 0,
            "total_tokens": (pt or 0) + (ct or 0),
        },
    }
    return body, pt, ct


@dataclass(frozen=True)
class Chunk:
    """One OpenAI chunk's delta and finish reason; `done` ends the stream instead."""

    delta: dict[str, Any]
    finish: str | None = None
    done: bool = False


@dataclass
class StreamState:
    """Translates Messages SSE events into OpenAI `chat.completion.chunk` deltas."""

    model: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tool_names: list[str] = field(default_factory=list)
    _blocks: dict[int, tuple[str, int]] = field(default_factory=dict)
    """Content block index -> (kind: text/tool/format, OpenAI tool_calls index)."""
    _format: bool = False

    def delta(self, event: dict[str, Any]) -> Chunk | None:
        """The chunk for one event; None drops the event."""
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.model = str(message.get("model", ""))
            self.prompt_tokens = _int((message.get("usage") or {}).get("input_tokens"))
            return Chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            return self._start(event)
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "message_delta":
            self.completion_tokens = _int((event.get("usage") or {}).get("output_tokens"))
            reason = (event.get("delta") or {}).get("stop_reason")
            finish = _FINISH.get(str(reason), "stop")
            if finish == "tool_calls" and self._format:  # the format tool is the answer
                finish = "stop"
            return Chunk({}, finish)
        if kind == "message_stop":
            return Chunk({}, done=True)
        return None

    def _start(self, event: dict[str, Any]) -> Chunk | None:
        index = event.get("index")
        block = event.get("content_block") or {}
        if not isinstance(index, int):
            return None
        if block.get("type") != "tool_use":
            self._blocks[index] = ("text", -1)
            text = block.get("text")
            return Chunk({"content": text}) if text else None
        if block.get("name") == FORMAT_TOOL:
            self._blocks[index] = ("format", -1)
            self._format = True
            return None
        position = len(self.tool_names)
        self.tool_names.append(str(block.get("name", "")))
        self._blocks[index] = ("tool", position)
        call = {
            "index": position,
            "id": str(block.get("id", "")),
            "type": "function",
            "function": {"name": str(block.get("name", "")), "arguments": ""},
        }
        return Chunk({"tool_calls": [call]})

    def _delta(self, event: dict[str, Any]) -> Chunk | None:
        delta = event.get("delta") or {}
        kind, position = self._blocks.get(event.get("index", -1), ("text", -1))
        if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
            return Chunk({"content": delta["text"]})
        partial = delta.get("partial_json")
        if delta.get("type") != "input_json_delta" or not isinstance(partial, str):
            return None
        if kind == "format":
            return Chunk({"content": partial})
        return Chunk({"tool_calls": [{"index": position, "function": {"arguments": partial}}]})
