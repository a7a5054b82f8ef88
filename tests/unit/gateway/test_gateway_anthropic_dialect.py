"""The Anthropic dialect: tools, tool_choice, tool_use/tool_result, images, formats and
streamed tool-call deltas, translated both ways; what it cannot honour is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kascade.gateway import config
from kascade.gateway.experts import anthropic, providers

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def _expert() -> config.ExpertConfig:
    return config.ExpertConfig.model_validate(
        {
            "provider": "anthropic",
            "endpoint": "https://api.example.com",
            "model": "claude",
            "pricing": {"inputPerMillionTokens": 3, "outputPerMillionTokens": 15},
            "budget": {"limitUSD": 1},
        }
    )


def _body(messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    req = providers.build_request(
        expert=_expert(), api_key=None, messages=messages, params=params, max_tokens=50,
        stream=False,
    )  # fmt: skip
    body: dict[str, Any] = json.loads(req.body)
    return body


def test_tools_choice_and_a_full_tool_turn_translate_to_messages_api() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "9h"}]},
        {"role": "user", "content": "thanks"},
    ]
    body = _body(
        messages,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        user="u-42",
        stop=["END"],
        temperature=0.5,
    )
    assert body == {
        "model": "claude",
        "max_tokens": 50,
        "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "call_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "9h"},
                    {"type": "text", "text": "thanks"},
                ],
            },
        ],
        "system": "be brief",
        "temperature": 0.5,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-42"},
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather in a city",
                "input_schema": WEATHER["function"]["parameters"],
            },
            {"name": "get_time", "input_schema": {"type": "object"}},
        ],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})],
)
def test_tool_choice_words(choice: str, expected: dict[str, Any]) -> None:
    body = _body([{"role": "user", "content": "x"}], tools=[TIME], tool_choice=choice)
    assert body["tool_choice"] == expected


def test_images_become_image_blocks() -> None:
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
        {
            "type": "image_url",
            "image_url": {"url": "https://example.com/cat.jpg", "detail": "auto"},
        },
    ]
    body = _body([{"role": "user", "content": content}])
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0K"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        }
    ]  # fmt: skip


def test_json_schema_format_is_a_forced_tool_and_comes_back_as_content() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "Count", "schema": schema}}
    body = _body([{"role": "user", "content": "count"}], response_format=fmt)
    assert body["tools"] == [
        {
            "name": anthropic.FORMAT_TOOL,
            "description": "Answer with this JSON object.",
            "input_schema": schema,
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": anthropic.FORMAT_TOOL}
    answer = providers.parse_answer(
        provider="anthropic",
        data={
            "id": "m1",
            "model": "claude",
            "stop_reason": "tool_use",
            "content": [
                {"type": "tool_use", "id": "t", "name": anthropic.FORMAT_TOOL, "input": {"n": 3}}
            ],
            "usage": {"input_tokens": 4, "output_tokens": 2},
        },
    )
    choice = answer.completion["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": '{"n":3}'}
    assert choice["finish_reason"] == "stop"


def test_tool_use_answer_becomes_tool_calls() -> None:
    answer = providers.parse_answer(
        provider="anthropic",
        data={
            "id": "m1",
            "model": "claude",
            "stop_reason": "tool_use",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "tu_1", "name": "get_weather",
                 "input": {"city": "Paris"}},
            ],
            "usage": {"input_tokens": 10, "output_tokens": 7},
        },
    )  # fmt: skip
    choice = answer.completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "tu_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    assert (answer.prompt_tokens, answer.completion_tokens) == (10, 7)
    assert providers.tool_call_names(answer.completion) == ("get_weather",)


def _sse(kind: str, data: dict[str, Any]) -> list[bytes]:
    return [f"event: {kind}\n".encode(), f"data: {json.dumps(data)}\n".encode(), b"\n"]


def test_streamed_tool_use_becomes_tool_call_deltas() -> None:
    events = [
        ("message_start", {"type": "message_start",
                           "message": {"model": "claude", "usage": {"input_tokens": 9}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Checking"}}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "tool_use", "id": "tu_1",
                                                   "name": "get_weather", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta", "partial_json": '{"ci'}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta",
                                           "partial_json": 'ty":"Paris"}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                           "usage": {"output_tokens": 12}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    translator = providers.StreamTranslator(provider="anthropic")
    out = [
        o
        for kind, data in events
        for line in _sse(kind, data)
        if (o := translator.feed(line)) is not None
    ]
    usage, done = out[-1].split(b"\n\n", 1)
    assert done == b"data: [DONE]\n\n"
    assert json.loads(usage[6:])["usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": 12,
        "total_tokens": 21,
    }
    deltas = [json.loads(o[6:])["choices"][0] for o in out[:-1]]
    assert [d["delta"] for d in deltas] == [
        {"role": "assistant", "content": ""},
        {"content": "Checking"},
        {"tool_calls": [{"index": 0, "id": "tu_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Paris"}'}}]},
        {},
    ]  # fmt: skip
    assert deltas[-1]["finish_reason"] == "tool_calls"
    assert translator.tool_names == ["get_weather"]
    assert translator.tool_arguments == ['{"city":"Paris"}']
    assert (translator.prompt_tokens, translator.completion_tokens) == (9, 12)


@pytest.mark.parametrize(
    ("params", "messages", "param"),
    [
        ({"logprobs": True}, None, "logprobs"),
        ({"seed": 7}, None, "seed"),
        ({"presence_penalty": 0.5}, None, "presence_penalty"),
        ({"metadata": {"k": "v"}}, None, "metadata"),
        ({"temperature": 1.5}, None, "temperature"),
        ({"tools": [{**TIME, "function": {"name": "f", "strict": True}}]}, None,
         "tools[0].function.strict"),
        ({"tools": [TIME], "response_format": {"type": "json_object"}}, None, "response_format"),
        ({}, [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
         "messages[0].content[0].type"),
        ({}, [{"role": "user", "content": [{"type": "image_url",
                                            "image_url": {"url": "ftp://x/y.png"}}]}],
         "messages[0].content[0].image_url.url"),
    ],
)  # fmt: skip
def test_what_anthropic_cannot_honour_is_refused_by_name(
    params: dict[str, Any], messages: list[dict[str, Any]] | None, param: str
) -> None:
    with pytest.raises(providers.Unsupported) as caught:
        providers.check(
            provider="anthropic",
            messages=messages or [{"role": "user", "content": "x"}],
            params=params,
        )
    assert caught.value.param == param
    assert f"`{param}`" in str(caught.value)
    # OpenAI and Azure take the same request verbatim.
    for provider in ("openai", "azure-openai"):
        providers.check(provider=provider, messages=messages or [], params=params)


def test_no_op_defaults_are_accepted() -> None:
    providers.check(
        provider="anthropic",
        messages=[{"role": "user", "content": "x"}],
        params={"logprobs": False, "presence_penalty": 0, "store": False, "modalities": ["text"]},
    )
