"""The simulated expert's tool calls and structured answers: deterministic instances
of the JSON Schemas that clients (pydantic, the openai SDK) really send."""

from __future__ import annotations

import jsonschema
import openai
import pydantic

from kascade.simexpert import replies


class Address(pydantic.BaseModel):
    city: str
    zip_code: str | None = None


class Person(pydantic.BaseModel):
    name: str
    age: int
    tags: list[str]
    home: Address
    kind: str = pydantic.Field(json_schema_extra={"enum": ["a", "b"]})


def test_examples_follow_pydantic_and_strict_sdk_schemas() -> None:
    for schema in (
        Person.model_json_schema(),
        openai.pydantic_function_tool(Person)["function"]["parameters"],
    ):
        value = replies.example(schema, text="hello")
        jsonschema.validate(value, schema)
        assert Person.model_validate(value) == Person(
            name="hello", age=1, tags=["hello"], home=Address(city="hello", zip_code="hello"),
            kind="a",
        )  # fmt: skip


def test_plan_calls_the_forced_tool_and_answers_tool_results() -> None:
    tools = [
        {"type": "function", "function": {"name": "a"}},
        {"type": "function", "function": {"name": "b", "parameters": Address.model_json_schema()}},
    ]
    body = {
        "messages": [{"role": "user", "content": "Oslo"}],
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "b"}},
    }
    plan = replies.plan(body, dialect="openai", name="sim", last="Oslo")
    [call] = plan.calls
    assert (call.name, call.arguments) == ("b", {"city": "Oslo", "zip_code": "Oslo"})
    assert replies.plan({**body, "tool_choice": "none"}, dialect="openai", name="s", last="x") == (
        replies.Plan()
    )
    answered = {**body, "messages": [*body["messages"], {"role": "tool", "content": "ok"}]}
    assert replies.plan(answered, dialect="openai", name="sim", last="Oslo").text == (
        "[sim] tool said: ok"
    )
    anthropic = {
        "messages": [{"role": "user", "content": [{"type": "tool_result", "content": "7"}]}],
        "tools": [{"name": "a", "input_schema": {"type": "object"}}],
    }
    assert replies.plan(anthropic, dialect="anthropic", name="c", last="").text == (
        "[c] tool said: 7"
    )
