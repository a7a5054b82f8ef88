"""The official `openai` SDK as the gateway's caller: sync, async, streaming, tools and
structured output (`parse()` with a pydantic model), each through the local pool, an
escalated OpenAI expert, an escalated Azure OpenAI expert and an escalated Anthropic
expert, checking the exact bytes the simulated upstream received."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pydantic
import pytest
from tests.integration.gateway.conftest import Gateway, Sim, expert_config, gateway_config

from kascade.gateway.experts import anthropic

PATHS = ("local", "openai", "azure", "anthropic")
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
QUESTION = "What is the weather in Paris?"
DEFAULT_MAX_TOKENS = 1024  # ExpertConfig.default_max_tokens: the client sets none


class Weather(pydantic.BaseModel):
    city: str
    temperature_c: float
    sunny: bool


@dataclass
class Route:
    kind: str
    gw: Gateway
    upstream: Sim
    """The simulator that receives the forwarded request (the pool on the local path)."""
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Bodies the SDK sent to the gateway, in order."""

    @property
    def route(self) -> str:
        return "local" if self.kind == "local" else "expert:e1"

    @property
    def name(self) -> str:
        return "pool" if self.kind == "local" else "e1"

    def received(self) -> str:
        """The raw body of the last request the upstream received."""
        raw = self.upstream.records[-1]["raw"]
        assert isinstance(raw, str)
        return raw

    def _capture(self, request: httpx.Request) -> None:
        self.sent.append(json.loads(request.content))

    def client(self) -> openai.OpenAI:
        hooks = {"request": [self._capture]}
        return openai.OpenAI(
            base_url=f"{self.gw.url}/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx.Client(event_hooks=hooks),
        )

    def async_client(self) -> openai.AsyncOpenAI:
        async def capture(request: httpx.Request) -> None:
            self._capture(request)

        return openai.AsyncOpenAI(
            base_url=f"{self.gw.url}/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx.AsyncClient(event_hooks={"request": [capture]}),
        )


@pytest.fixture(params=PATHS)
async def route(request: pytest.FixtureRequest, start_sim: Any, start_gateway: Any) -> Route:
    kind = request.param
    pool = await start_sim(name="pool", confidence=0.95 if kind == "local" else 0.1)
    expert = await start_sim(name="e1")
    experts = {"e1": upstream_expert(kind, expert.url)}
    gw = await start_gateway(gateway_config(pool=pool.url, experts=experts))
    return Route(kind=kind, gw=gw, upstream=pool if kind == "local" else expert)


def upstream_expert(kind: str, url: str) -> dict[str, Any]:
    """The expert config of a path (the local path's expert is never called)."""
    if kind == "anthropic":
        return expert_config(url, provider="anthropic")
    if kind == "azure":
        return expert_config(url, provider="azure-openai", apiVersion="2024-10-21")
    return expert_config(url)


def openai_upstream_body(sent: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    # What the OpenAI adapter sends: the client's parameters, the expert's model and
    # max_tokens, and usage asked for on streams.
    gateway_own = ("model", "messages", "stream", "stream_options")
    params = {k: v for k, v in sent.items() if k not in gateway_own}
    body = {"model": "sim-model", "messages": sent["messages"], **params}
    body["max_tokens"] = DEFAULT_MAX_TOKENS
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def expected_upstream(route: Route, anthropic_body: dict[str, Any]) -> str:
    """The exact bytes the upstream must have received for the last SDK request."""
    sent = route.sent[-1]
    if route.kind == "local":  # the pool gets the client's body, its own model name
        return json.dumps({**sent, "model": "smol", "stream": False})
    if route.kind in ("openai", "azure"):
        path = route.upstream.records[-1]["path"]
        if route.kind == "azure":
            assert path == "/openai/deployments/sim-model/chat/completions?api-version=2024-10-21"
        else:
            assert path == "/v1/chat/completions"
        return json.dumps(openai_upstream_body(sent, stream=sent.get("stream") is True))
    return json.dumps(anthropic_body)


ANTHROPIC_WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}


async def test_sync_client_gets_a_tool_call(route: Route) -> None:
    client = route.client()
    completion = await asyncio.to_thread(
        client.chat.completions.create,
        model="default",
        messages=[{"role": "user", "content": QUESTION}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": QUESTION}
    assert route.sent[-1] == {
        "messages": [{"role": "user", "content": QUESTION}],
        "model": "default",
        "tools": [WEATHER_TOOL],
    }
    assert route.received() == expected_upstream(
        route,
        {
            "model": "sim-model",
            "max_tokens": DEFAULT_MAX_TOKENS,
            "messages": [{"role": "user", "content": QUESTION}],
            "tools": [ANTHROPIC_WEATHER_TOOL],
        },
    )
    [line] = route.gw.audit()
    assert line["route"] == route.route
    assert line["tools_offered"] == ["get_weather"]
    assert line["tool_calls"] == ["get_weather"]
    assert QUESTION not in json.dumps(line)  # names only, never arguments


async def test_async_client_runs_a_two_turn_tool_loop(route: Route) -> None:
    client = route.async_client()
    messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
    first = await client.chat.completions.create(
        model="default",
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
    )
    [call] = first.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    second = await client.chat.completions.create(
        model="default",
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == f"[{route.name}] tool said: sunny, 21C"
    assert second.choices[0].message.tool_calls is None
    assert route.received() == expected_upstream(
        route,
        {
            "model": "sim-model",
            "max_tokens": DEFAULT_MAX_TOKENS,
            "messages": [
                {"role": "user", "content": QUESTION},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": call.id,
                            "name": "get_weather",
                            "input": {"city": QUESTION},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21C"}
                    ],
                },
            ],
            "tools": [ANTHROPIC_WEATHER_TOOL],
        },
    )
    if route.kind == "anthropic":  # the first turn's choice and parallelism, translated
        first_body = json.loads(route.upstream.records[-2]["raw"])
        assert first_body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    audit = route.gw.audit()
    assert [line["tool_calls"] for line in audit] == [["get_weather"], []]


async def test_streaming_tool_call_deltas_reassemble(route: Route) -> None:
    client = route.client()

    def run() -> tuple[dict[int, dict[str, str]], list[str | None]]:
        calls: dict[int, dict[str, str]] = {}
        finishes: list[str | None] = []
        stream = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": QUESTION}],
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            stream=True,
        )
        for chunk in stream:
            for choice in chunk.choices:
                finishes.append(choice.finish_reason)
                for delta in choice.delta.tool_calls or []:
                    slot = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                    slot["id"] += delta.id or ""
                    if delta.function is not None:
                        slot["name"] += delta.function.name or ""
                        slot["arguments"] += delta.function.arguments or ""
        return calls, finishes

    calls, finishes = await asyncio.to_thread(run)
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather"
    assert calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"city": QUESTION}
    assert [f for f in finishes if f is not None] == ["tool_calls"]
    assert route.received() == expected_upstream(
        route,
        {
            "model": "sim-model",
            "max_tokens": DEFAULT_MAX_TOKENS,
            "messages": [{"role": "user", "content": QUESTION}],
            "tools": [ANTHROPIC_WEATHER_TOOL],
            "stream": True,
        },
    )
    [line] = route.gw.audit()
    assert line["tool_calls"] == ["get_weather"]


async def test_parse_returns_the_pydantic_model(route: Route) -> None:
    client = route.client()
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    completion = await asyncio.to_thread(
        parse,
        model="default",
        messages=[{"role": "user", "content": "Weather in Paris as JSON"}],
        response_format=Weather,
    )
    parsed = completion.choices[0].message.parsed
    assert parsed == Weather(city="Weather in Paris as JSON", temperature_c=1.5, sunny=True)
    fmt = route.sent[-1]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Weather"
    assert route.received() == expected_upstream(
        route,
        {
            "model": "sim-model",
            "max_tokens": DEFAULT_MAX_TOKENS,
            "messages": [{"role": "user", "content": "Weather in Paris as JSON"}],
            "tools": [
                {
                    "name": anthropic.FORMAT_TOOL,
                    "description": "Answer with this JSON object.",
                    "input_schema": fmt["json_schema"]["schema"],
                }
            ],
            "tool_choice": {"type": "tool", "name": anthropic.FORMAT_TOOL},
        },
    )
    [line] = route.gw.audit()
    assert line["route"] == route.route
    assert line["response_format"] == "json_schema"
    assert line["format_problem"] is None


async def test_async_streaming_text_keeps_sampling_parameters(route: Route) -> None:
    client = route.async_client()
    stream = await client.chat.completions.create(
        model="default",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        stream=True,
        temperature=0.3,
        top_p=0.9,
        stop=["END"],
        user="user-7",
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"[{route.name}] hi"
    usage = chunks[-1].usage  # every path ends with the usage the upstream reported
    assert usage is not None
    assert usage.completion_tokens == 2  # the simulator counts the answer's words
    assert usage.total_tokens == usage.prompt_tokens + 2
    assert route.received() == expected_upstream(
        route,
        {
            "model": "sim-model",
            "max_tokens": DEFAULT_MAX_TOKENS,
            "messages": [{"role": "user", "content": "hi"}],
            "system": "be brief",
            "temperature": 0.3,
            "top_p": 0.9,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "user-7"},
            "stream": True,
        },
    )


async def test_async_streaming_structured_answer(route: Route) -> None:
    client = route.async_client()
    schema = Weather.model_json_schema()
    fmt = {"type": "json_schema", "json_schema": {"name": "Weather", "schema": schema}}
    stream = await client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Paris"}],
        response_format=fmt,  # type: ignore[arg-type]
        stream=True,
    )
    chunks = [c async for c in stream if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert Weather.model_validate_json(text) == Weather(city="Paris", temperature_c=1.5, sunny=True)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    assert all(not c.choices[0].delta.tool_calls for c in chunks)
    assert route.received() == expected_upstream(
        route,
        {
            "model": "sim-model",
            "max_tokens": DEFAULT_MAX_TOKENS,
            "messages": [{"role": "user", "content": "Paris"}],
            "tools": [
                {
                    "name": anthropic.FORMAT_TOOL,
                    "description": "Answer with this JSON object.",
                    "input_schema": schema,
                }
            ],
            "tool_choice": {"type": "tool", "name": anthropic.FORMAT_TOOL},
            "stream": True,
        },
    )


PIXEL = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


async def test_image_parts_reach_the_upstream(route: Route) -> None:
    client = route.client()
    content = [
        {"type": "text", "text": "What colour is this pixel?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
    ]
    completion = await asyncio.to_thread(
        client.chat.completions.create,
        model="default",
        messages=[{"role": "user", "content": content}],  # type: ignore[misc, list-item]
    )
    assert completion.choices[0].message.content == f"[{route.name}] What colour is this pixel?"
    image = {"type": "base64", "media_type": "image/png", "data": PIXEL}
    assert route.received() == expected_upstream(
        route,
        {
            "model": "sim-model",
            "max_tokens": DEFAULT_MAX_TOKENS,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What colour is this pixel?"},
                        {"type": "image", "source": image},
                    ],
                }
            ],
        },
    )
