"""The OpenAI chat-completions parameters the gateway accepts, and the shape checks of
the structured ones (tools, tool_choice, response_format).

Every parameter a client may send is named here: the gateway handles a few itself
(`GATEWAY`), forwards the rest to the expert (`FORWARDED`, each provider adapter then
sends it or refuses the request), and answers 400 for any other, so nothing a client
sends is silently dropped.
"""

from __future__ import annotations

import re
from typing import Any

from kascade.gateway.endpoints import errors

GATEWAY = frozenset({"model", "messages", "stream", "stream_options", "max_tokens", "n"})
"""Read by the gateway itself (max_tokens is resolved per expert, stream per route)."""

FORWARDED = (
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "max_completion_tokens",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "user",
    "metadata",
    "store",
    "service_tier",
    "reasoning_effort",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
    "verbosity",
    "prompt_cache_key",
    "safety_identifier",
    "functions",
    "function_call",
)
"""Sent on to experts (as the client sent them, or translated by the provider adapter)."""

_KNOWN = GATEWAY | frozenset(FORWARDED)
# OpenAI's own rule for function names; it also keeps names safe as metric labels.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FORMATS = ("text", "json_object", "json_schema")


def _bad(message: str, *, param: str, code: str = "invalid_value") -> errors.ApiError:
    return errors.ApiError(status=400, message=message, param=param, code=code)


def check_known(body: dict[str, Any]) -> None:
    """400 for a parameter the gateway neither reads nor forwards."""
    for key in body:
        if key not in _KNOWN:
            raise _bad(
                f"Unrecognized request argument supplied: `{key}`. The gateway accepts the "
                f"OpenAI chat-completions parameters: {', '.join(sorted(_KNOWN))}.",
                param=key,
                code="unknown_parameter",
            )


def tool_names(body: dict[str, Any]) -> tuple[str, ...]:
    """Validates `tools`; returns the offered function names in order."""
    tools = body.get("tools")
    if tools is None:
        if body.get("tool_choice") is not None:
            raise _bad("`tool_choice` is only allowed when `tools` are given.", param="tool_choice")
        return ()
    if not isinstance(tools, list) or not tools or len(tools) > 128:
        raise _bad("`tools` must be an array of 1 to 128 tool objects.", param="tools")
    names: list[str] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad(f"`{where}.type` must be 'function'.", param=f"{where}.type")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise _bad(f"`{where}.function` must be an object.", param=f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise _bad(
                f"`{where}.function.name` must be 1-64 letters, digits, '_' or '-'.",
                param=f"{where}.function.name",
            )
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _bad(
                f"`{where}.function.parameters` must be a JSON Schema object.",
                param=f"{where}.function.parameters",
            )
        names.append(name)
    _check_tool_choice(body.get("tool_choice"), names)
    return tuple(names)


def _check_tool_choice(choice: object, names: list[str]) -> None:
    if choice is None or choice in ("none", "auto", "required"):
        return
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if name in names:
            return
        raise _bad(
            f"`tool_choice.function.name` must name one of the offered tools {names}.",
            param="tool_choice.function.name",
        )
    raise _bad(
        "`tool_choice` must be 'none', 'auto', 'required' or "
        '{"type": "function", "function": {"name": ...}}.',
        param="tool_choice",
    )


def format_type(body: dict[str, Any]) -> str | None:
    """Validates `response_format`; returns its type (None when absent)."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in _FORMATS:
        raise _bad(
            f"`response_format.type` must be one of {list(_FORMATS)}.",
            param="response_format.type",
        )
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise _bad(
                "`response_format.json_schema` must be an object with a `name`.",
                param="response_format.json_schema",
            )
        if not isinstance(spec.get("schema", {}), dict):
            raise _bad(
                "`response_format.json_schema.schema` must be a JSON Schema object.",
                param="response_format.json_schema.schema",
            )
    return str(kind)


def json_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema a json_schema response_format asks for (None otherwise)."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = fmt["json_schema"].get("schema")
    return schema if isinstance(schema, dict) else {}
