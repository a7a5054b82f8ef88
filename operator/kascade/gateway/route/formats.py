"""Checks a local answer against the response_format its request asked for: an answer
that is not the JSON asked for is escalated (reason `invalid_format`) instead of being
returned."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema

from kascade.gateway.route import parameters, request


@functools.lru_cache(maxsize=128)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def problem(*, chat: request.ChatRequest, completion: dict[str, Any]) -> str | None:
    """Why the answer does not follow the requested format (None when it does, or when
    no JSON format was asked for). Never contains the answer text."""
    if chat.response_format not in ("json_object", "json_schema"):
        return None
    choices = completion.get("choices") or [{}]
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        return "answer has no message"
    if message.get("tool_calls"):
        return None  # A tool call is not the formatted answer; the next turn is.
    try:
        value = json.loads(message.get("content") or "")
    except ValueError:
        return "answer is not JSON"
    schema = parameters.json_schema(chat.body)
    if schema is None:
        return None if isinstance(value, dict) else "answer is not a JSON object"
    try:
        error = jsonschema.exceptions.best_match(
            _validator(json.dumps(schema, sort_keys=True)).iter_errors(value)
        )
    except jsonschema.exceptions.SchemaError:
        return "response_format schema is not a valid JSON Schema"
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"answer does not follow the schema at {where}: {error.validator} failed"
