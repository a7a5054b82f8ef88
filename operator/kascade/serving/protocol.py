"""The OpenAI chat-completions wire format: request validation, error bodies, responses.

Pure functions and pydantic models only (no Ray, no model), so every rule a client can
break is unit-tested without starting anything.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import pydantic

from kascade.api import wire

__all__ = [
    "CONFIDENCE_HEADER",
    "CONFIDENCE_METHOD_HEADER",
    "ApiError",
    "ChatMessage",
    "ChatRequest",
    "chunk_body",
    "completion_body",
    "error_body",
    "parse_chat_request",
    "sse_event",
    "usage_body",
]

CONFIDENCE_HEADER = wire.CONFIDENCE_HEADER
CONFIDENCE_METHOD_HEADER = wire.CONFIDENCE_METHOD_HEADER


@dataclasses.dataclass(frozen=True, kw_only=True)
class ApiError(Exception):
    """An error answered to the client with an OpenAI-style body."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after_s: int | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.type}: {self.message}"


def error_body(error: ApiError) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI returns it."""
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }


class _Lenient(pydantic.BaseModel):
    # Clients send fields we do not use (user, presence_penalty, ...): ignore those, but
    # the fields we do use are type-checked strictly (no "1" for 1, no 1 for "1").
    model_config = pydantic.ConfigDict(extra="ignore", strict=True, frozen=True)


class _TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ChatMessage(_Lenient):
    """One message; content is a string or a list of text parts."""

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[_TextPart] | None = None

    @property
    def text(self) -> str:
        """The content as plain text (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _StreamOptions(_Lenient):
    include_usage: bool = False


class _JsonSchemaFormat(_Lenient):
    name: str
    schema_: dict[str, Any] = pydantic.Field(default_factory=dict, alias="schema")


class _ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchemaFormat | None = None

    @pydantic.model_validator(mode="after")
    def _schema_given(self) -> _ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs json_schema")
        return self


class ChatRequest(_Lenient):
    """The subset of the OpenAI chat-completions request that local models honour."""

    messages: list[ChatMessage] = pydantic.Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = pydantic.Field(default=None, ge=1)
    max_completion_tokens: int | None = pydantic.Field(default=None, ge=1)
    temperature: float = pydantic.Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = pydantic.Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None
    n: int = pydantic.Field(default=1, ge=1, le=1)
    response_format: _ResponseFormat | None = None

    @pydantic.field_validator("temperature", "top_p", mode="before")
    @classmethod
    def _int_is_float(cls, value: object) -> object:
        # JSON has one number type: 0 and 0.0 must both be accepted (bools are not).
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    @pydantic.field_validator("stop")
    @classmethod
    def _stop_bounds(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return value

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        """Stop strings as a tuple (possibly empty)."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def json_schema(self) -> str | None:
        """The JSON Schema (as JSON text) the answer must follow; None when free text."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object" or fmt.json_schema is None:
            return json.dumps({"type": "object"})
        return json.dumps(fmt.json_schema.schema_ or {"type": "object"})

    @property
    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` (the newer name) or ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


def parse_chat_request(body: bytes) -> ChatRequest:
    """Parses and validates a request body; raises :class:`ApiError` (400) naming the field."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(
            status=400, message=f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(
            status=400,
            message=f"request body must be a JSON object, got {type(data).__name__}",
            code="invalid_json",
        )
    try:
        return ChatRequest.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        param = _param_path(first["loc"])
        if first["type"] == "missing":
            message = f"'{param}' is a required property"
            code = "missing_required_parameter"
        else:
            message = f"invalid value for '{param}': {first['msg']}"
            code = "invalid_value"
        raise ApiError(status=400, message=message, param=param, code=code) from None


def _param_path(loc: tuple[int | str, ...]) -> str | None:
    # pydantic adds union member tags ("str", "list[_TextPart]") to error locations;
    # clients want the JSON path only, so keep indexes and our field names.
    fields = {
        name
        for model in (
            ChatRequest,
            ChatMessage,
            _TextPart,
            _StreamOptions,
            _ResponseFormat,
            _JsonSchemaFormat,
        )
        for name in model.model_fields
    }
    kept: list[str] = []
    for part in loc:
        if isinstance(part, int) or part in fields:
            kept.append(str(part))
        else:
            break
    return ".".join(kept) or None


def usage_body(*, prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    *,
    completion_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    confidence: float,
    confidence_method: str,
    confidence_signals: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` with the ``confidence`` extension fields
    (``confidence_signals``: every signal the gateway's combined score may read)."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage_body(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
        wire.CONFIDENCE_FIELD: confidence,
        wire.CONFIDENCE_METHOD_FIELD: confidence_method,
    }
    if confidence_signals is not None:
        body[wire.CONFIDENCE_SIGNALS_FIELD] = confidence_signals
    return body


def chunk_body(
    *,
    completion_id: str,
    created: int,
    model: str,
    delta: dict[str, str],
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of an SSE stream."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def sse_event(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event line pair: ``data: <json>\\n\\n``."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
