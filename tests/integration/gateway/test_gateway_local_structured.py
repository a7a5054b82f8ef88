"""Structured output on the local path with the real model: the openai SDK's `parse()`
through the gateway to SmolLM2 under llama.cpp, whose grammar (from the schema the SDK
derived from a pydantic model) shapes the answer, which the gateway validates."""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Iterator
from typing import Any

import llama_cpp  # noqa: F401  (the serving extra is part of the test environment)
import openai
import pydantic
import pytest
from aiohttp import web
from tests.integration.gateway.conftest import gateway_config, serve

from kascade.serving import config, server

pytestmark = pytest.mark.serving


class Color(enum.StrEnum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Fruit(pydantic.BaseModel):
    color: Color
    count: int
    ripe: bool


@pytest.fixture(scope="module")
def model() -> Iterator[server.ChatServer]:
    pool = config.PoolServingConfig.from_args(
        {
            "name": "smol",
            "model": {"source": "builtin://smollm2-135m-instruct", "contextLength": 512},
            "resources": {"cpu": 1},
            "capacity": {"maxConcurrentPerReplica": 1, "maxQueuedPerReplica": 0},
        }
    )
    srv = server.load_server(pool=pool)
    yield srv
    srv.close()


def _pool_app(model: server.ChatServer) -> web.Application:
    # The Ray Serve ingress adapts ChatServer the same way; Ray itself is not needed here.
    async def chat(http: web.Request) -> web.Response:
        reply = await model.handle(method="POST", path=http.path, body=await http.read())
        assert isinstance(reply, server.JsonReply)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def test_sdk_parse_on_the_local_model(
    model: server.ChatServer, start_gateway: Any, gw_stack: Any
) -> None:
    pool_url = await gw_stack.enter_async_context(serve(_pool_app(model)))
    gw = await start_gateway(gateway_config(pool=pool_url, experts={}))
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    completion = await asyncio.to_thread(
        client.chat.completions.parse,
        model="default",
        messages=[{"role": "user", "content": "Describe a banana as JSON."}],
        response_format=Fruit,
        temperature=0,
        max_tokens=60,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Fruit)
    assert completion.choices[0].finish_reason == "stop"
    [line] = gw.audit()
    assert line["route"] == "local"
    assert line["response_format"] == "json_schema"
    assert line["format_problem"] is None
    assert json.loads(completion.choices[0].message.content or "") == parsed.model_dump(mode="json")
