"""response_format on the real SmolLM2 model: llama.cpp's grammar, derived from the JSON
Schema, constrains every token, so the answer parses and follows the schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import llama_cpp  # noqa: F401  (the serving extra is part of the test environment)
import pytest

from kascade.serving import config, server

pytestmark = pytest.mark.serving

SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
        "count": {"type": "integer"},
        "ripe": {"type": "boolean"},
    },
    "required": ["color", "count", "ripe"],
    "additionalProperties": False,
}
MSGS = [{"role": "user", "content": "Describe a banana as JSON."}]


@pytest.fixture(scope="module")
def chat() -> Iterator[server.ChatServer]:
    pool = config.PoolServingConfig.from_args(
        {
            "name": "tiny",
            "model": {"source": "builtin://smollm2-135m-instruct", "contextLength": 256},
            "resources": {"cpu": 1},
            "capacity": {"maxConcurrentPerReplica": 1, "maxQueuedPerReplica": 0},
        }
    )
    srv = server.load_server(pool=pool)
    yield srv
    srv.close()


async def _reply(chat: server.ChatServer, **body: Any) -> dict[str, Any]:
    body = {"messages": MSGS, "temperature": 0, "max_tokens": 60, **body}
    reply = await chat.handle(
        method="POST", path="/v1/chat/completions", body=json.dumps(body).encode()
    )
    assert isinstance(reply, server.JsonReply)
    assert reply.status == 200, reply.body
    choice: dict[str, Any] = reply.body["choices"][0]
    return choice


async def _answer(chat: server.ChatServer, **body: Any) -> str:
    choice = await _reply(chat, **body)
    assert choice["finish_reason"] == "stop"  # the grammar ended it, not max_tokens
    content = choice["message"]["content"]
    assert isinstance(content, str)
    return content


async def test_json_schema_answer_follows_the_schema(chat: server.ChatServer) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "Fruit", "schema": SCHEMA}}
    value = json.loads(await _answer(chat, response_format=fmt))
    jsonschema.validate(value, SCHEMA)
    # The same prompt without the grammar: the model alone does not produce it.
    free = (await _reply(chat))["message"]["content"]
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        jsonschema.validate(json.loads(free), SCHEMA)


async def test_json_object_answer_is_an_object(chat: server.ChatServer) -> None:
    value = json.loads(await _answer(chat, response_format={"type": "json_object"}))
    assert isinstance(value, dict)


async def test_schema_without_json_schema_is_400(chat: server.ChatServer) -> None:
    body = {"messages": MSGS, "response_format": {"type": "json_schema"}}
    reply = await chat.handle(
        method="POST", path="/v1/chat/completions", body=json.dumps(body).encode()
    )
    assert isinstance(reply, server.JsonReply)
    assert reply.status == 400
    assert reply.body["error"]["param"] == "response_format"
