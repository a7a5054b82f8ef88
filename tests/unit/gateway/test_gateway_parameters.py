"""Request parameters: every OpenAI parameter is read, forwarded or refused by name;
tools, tool_choice and response_format are shape-checked; rules match on them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kascade.gateway import config
from kascade.gateway.endpoints import errors
from kascade.gateway.experts import providers
from kascade.gateway.route import request, rules

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def _parse(**extra: Any) -> request.ChatRequest:
    body = {"model": "p", "messages": [{"role": "user", "content": "hi"}], **extra}
    return request.parse(json.dumps(body).encode())


def test_forwarded_parameters_keep_the_client_order_and_drop_nulls() -> None:
    chat = _parse(
        tools=[TOOL],
        user="u",
        seed=None,
        response_format={"type": "json_object"},
        logprobs=True,
        metadata={"k": "v"},
        max_completion_tokens=9,
    )
    assert list(chat.params) == [
        "tools",
        "user",
        "response_format",
        "logprobs",
        "metadata",
        "max_completion_tokens",
    ]
    assert chat.tools == ("f",)
    assert chat.response_format == "json_object"
    assert chat.max_tokens == 9


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_k": 5}, "top_k"),
        ({"tools": []}, "tools"),
        ({"tools": [{"type": "custom"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]},
         "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
         "tools[0].function.parameters"),
        ({"tools": [TOOL], "tool_choice": "always"}, "tool_choice"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
         "tool_choice.function.name"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
         "response_format.json_schema"),
        ({"response_format": {"type": "json_schema",
                              "json_schema": {"name": "n", "schema": "x"}}},
         "response_format.json_schema.schema"),
    ],
)  # fmt: skip
def test_bad_parameters_are_400_naming_them(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(errors.ApiError) as caught:
        _parse(**extra)
    assert caught.value.status == 400
    assert caught.value.param == param


def _expert(provider: str, **kw: Any) -> config.ExpertConfig:
    return config.ExpertConfig.model_validate(
        {
            "provider": provider,
            "endpoint": "https://api.example.com",
            "model": "m",
            "pricing": {"inputPerMillionTokens": 1, "outputPerMillionTokens": 1},
            "budget": {"limitUSD": 1},
            **kw,
        }
    )


@pytest.mark.parametrize(
    "expert", [_expert("openai"), _expert("azure-openai", apiVersion="2024-06-01")]
)
def test_openai_and_azure_bodies_carry_every_parameter(expert: config.ExpertConfig) -> None:
    chat = _parse(
        tools=[TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        response_format={"type": "json_object"},
        logprobs=True,
        top_logprobs=3,
        user="u",
        metadata={"k": "v"},
        seed=4,
        max_completion_tokens=9,
    )
    req = providers.build_request(
        expert=expert, api_key="k", messages=chat.messages, params=chat.params,
        max_tokens=20, stream=False,
    )  # fmt: skip
    assert json.loads(req.body) == {
        "model": "m",
        "messages": chat.messages,
        "tools": [TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "top_logprobs": 3,
        "user": "u",
        "metadata": {"k": "v"},
        "seed": 4,
        # the client's name for the limit, with the value resolved for this expert
        "max_completion_tokens": 20,
    }


def _rule(**when: Any) -> config.Rule:
    return config.Rule.model_validate({"when": when, "action": "expert"})


def test_rules_match_tools_and_response_formats() -> None:
    tools, schemas, plain = (
        _rule(hasTools=True),
        _rule(responseFormats=["json_schema", "json_object"]),
        _rule(hasTools=False, responseFormats=["text"]),
    )
    table = [tools, schemas, plain]

    def first(**kw: Any) -> int | None:
        found = rules.match(rules=table, prompt_tokens=10, headers={}, **kw)
        return None if found is None else found[0]

    assert first(has_tools=True) == 0
    assert first(has_tools=False, response_format="json_schema") == 1
    assert first(has_tools=False, response_format=None) == 2
    assert first(has_tools=False, response_format="text") == 2
