"""`langchain-openai` (a framework client that wraps the openai SDK) runs a two-turn
tool-calling agent loop through the gateway, on the local, escalated-OpenAI, -Azure
and -Anthropic paths; the upstream's received bytes are checked."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from tests.integration.gateway.conftest import gateway_config
from tests.integration.gateway.test_gateway_sdk_clients import (
    DEFAULT_MAX_TOKENS,
    PATHS,
    openai_upstream_body,
    upstream_expert,
)

QUESTION = "How many items are in order A-17?"


@tool
def count_items(order_id: str) -> str:
    """Counts the items of an order."""
    return f"order {order_id} has 3 items"


@pytest.mark.parametrize("kind", PATHS)
async def test_two_turn_tool_agent_loop(kind: str, start_sim: Any, start_gateway: Any) -> None:
    pool = await start_sim(name="pool", confidence=0.95 if kind == "local" else 0.1)
    expert = await start_sim(name="e1")
    experts = {"e1": upstream_expert(kind, expert.url)}
    gw = await start_gateway(gateway_config(pool=pool.url, experts=experts))
    upstream = pool if kind == "local" else expert
    sent: list[dict[str, Any]] = []
    hooks = {"request": [lambda request: sent.append(json.loads(request.content))]}
    llm = ChatOpenAI(
        base_url=f"{gw.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        model="default",
        max_retries=0,
        http_client=httpx.Client(event_hooks=hooks),
    ).bind_tools([count_items])

    def loop() -> tuple[AIMessage, AIMessage]:
        history: list[Any] = [HumanMessage(QUESTION)]
        first = llm.invoke(history)
        assert isinstance(first, AIMessage)
        history.append(first)
        for call in first.tool_calls:  # the agent runs each requested tool
            result = count_items.invoke(call["args"])
            history.append(ToolMessage(result, tool_call_id=call["id"]))
        second = llm.invoke(history)
        assert isinstance(second, AIMessage)
        return first, second

    first, second = await asyncio.to_thread(loop)
    [call] = first.tool_calls
    assert call["name"] == "count_items"
    assert call["args"] == {"order_id": QUESTION}
    name = "pool" if kind == "local" else "e1"
    assert second.content == f"[{name}] tool said: order {QUESTION} has 3 items"
    assert second.tool_calls == []
    received = json.loads(upstream.records[-1]["raw"])
    schema = {
        "type": "object",
        "properties": {"order_id": {"type": "string"}},
        "required": ["order_id"],
    }
    if kind == "anthropic":
        assert received == {
            "model": "sim-model",
            "max_tokens": DEFAULT_MAX_TOKENS,
            "messages": [
                {"role": "user", "content": QUESTION},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": call["id"],
                            "name": "count_items",
                            "input": {"order_id": QUESTION},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": call["id"],
                            "content": f"order {QUESTION} has 3 items",
                        }
                    ],
                },
            ],
            "tools": [
                {
                    "name": "count_items",
                    "description": "Counts the items of an order.",
                    "input_schema": schema,
                }
            ],
        }
    elif kind in ("openai", "azure"):
        assert upstream.records[-1]["raw"] == json.dumps(openai_upstream_body(sent[-1]))
    else:
        assert upstream.records[-1]["raw"] == json.dumps(
            {**sent[-1], "model": "smol", "stream": False}
        )
    if kind != "anthropic":  # what langchain sent for the second turn
        assert sent[-1]["messages"][2] == {
            "content": f"order {QUESTION} has 3 items",
            "role": "tool",
            "tool_call_id": call["id"],
        }
        assert sent[-1]["tools"][0]["function"]["parameters"] == schema
    assert [line["tool_calls"] for line in gw.audit()] == [["count_items"], []]
