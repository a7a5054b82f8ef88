"""Validating a chat-completion request body into what the pipeline needs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kascade.gateway.endpoints import errors
from kascade.gateway.route import bounds, parameters

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_NUMBER_BOUNDS = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0)}
# Parameters forwarded to experts (each provider adapter sends or refuses them).
FORWARDED = parameters.FORWARDED
_FORWARDED = frozenset(FORWARDED)


@dataclass(frozen=True)
class ChatRequest:
    body: dict[str, Any]
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    max_tokens: int | None
    params: dict[str, Any]
    prompt_bound: int
    prompt_estimate: int
    tools: tuple[str, ...] = ()
    """Names of the functions offered in `tools` (governance: names only)."""
    response_format: str | None = None
    """`response_format.type` when the request sets one."""
    body_bytes: int = 0
    """Size of the request body: large ones are scanned for privacy off the event loop."""


def _bad(message: str, *, param: str | None, code: str = "invalid_value") -> errors.ApiError:
    return errors.ApiError(status=400, message=message, param=param, code=code)


def _too_deep(path: str) -> errors.ApiError:
    return _bad(
        f"`{path}` nests JSON deeper than {bounds.MAX_DEPTH} levels.",
        param=path,
        code="too_deep",
    )


def text_of(content: object) -> str:
    """The text of a message content (string or list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def parse(raw: bytes) -> ChatRequest:
    """Parses and validates; raises ApiError(400) naming the bad field."""
    # Checks run in a fixed order: the first bad field is the one the error names.
    body = _decode_object(raw)
    parameters.check_known(body)
    model = _model(body)
    messages, bound, estimate = _messages(body)
    stream = _stream(body)
    max_tokens = _max_tokens(body)
    _check_sampling(body)
    tools = parameters.tool_names(body)
    response_format = parameters.format_type(body)
    # In the client's order; explicit nulls mean "not set" (strict providers refuse them).
    params = {k: v for k, v in body.items() if k in _FORWARDED and v is not None}
    return ChatRequest(
        body=body,
        model=model,
        messages=messages,
        stream=stream,
        max_tokens=max_tokens,
        params=params,
        prompt_bound=bound,
        prompt_estimate=estimate,
        tools=tools,
        response_format=response_format,
        body_bytes=len(raw),
    )


def _decode_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object no deeper than bounds.MAX_DEPTH."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(
            f"Request body is not valid JSON: {exc}", param=None, code="invalid_json"
        ) from None
    except RecursionError:
        raise _too_deep(bounds.top_level_key(raw) or "<body>") from None
    if not isinstance(body, dict):
        raise _bad("Request body must be a JSON object.", param=None, code="invalid_type")
    try:
        bounds.check_depth(body)
    except bounds.TooDeep as exc:
        raise _too_deep(exc.path) from None
    return body


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("`model` must be a non-empty string naming a RoutingPolicy.", param="model")
    return model


def _messages(body: dict[str, Any]) -> tuple[list[dict[str, Any]], int, int]:
    """The messages, with a bound and an estimate of the prompt's tokens."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("`messages` must be a non-empty array of message objects.", param="messages")
    bound = 16
    estimate = 3
    for i, m in enumerate(messages):
        text = _message_text(i, m)
        # Every BPE token covers at least one byte: bytes bound the prompt's tokens.
        bound += len(text.encode()) + 8
        estimate += len(text) // 4 + 4
    return messages, bound, estimate


def _message_text(i: int, m: object) -> str:
    """The text of `messages[i]`, after checking its role and content."""
    if not isinstance(m, dict):
        raise _bad(f"`messages[{i}]` must be an object.", param=f"messages[{i}]")
    role = m.get("role")
    if role not in _ROLES:
        raise _bad(
            f"`messages[{i}].role` must be one of {sorted(_ROLES)}, got {role!r}.",
            param=f"messages[{i}].role",
        )
    content = m.get("content")
    if not (isinstance(content, str | list) or (content is None and role == "assistant")):
        raise _bad(
            f"`messages[{i}].content` must be a string or an array of content parts.",
            param=f"messages[{i}].content",
        )
    return text_of(content)


def _stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("`stream` must be a boolean.", param="stream")
    return stream


def _max_tokens(body: dict[str, Any]) -> int | None:
    """`max_tokens` (or its newer name `max_completion_tokens`), bounded."""
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise _bad("`max_tokens` must be a positive integer.", param="max_tokens")
    if max_tokens is not None and max_tokens > bounds.MAX_TOKENS:
        raise _bad(
            f"`max_tokens` must be at most {bounds.MAX_TOKENS}, got {max_tokens}.",
            param="max_tokens",
        )
    return max_tokens


def _check_sampling(body: dict[str, Any]) -> None:
    """Sampling numbers within their ranges, and one choice only."""
    for key, (low, high) in _NUMBER_BOUNDS.items():
        value = body.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise _bad(f"`{key}` must be a number from {low} to {high}.", param=key)
    n = body.get("n", 1)
    if n != 1:
        raise _bad("`n` must be 1: the gateway returns one choice.", param="n")
