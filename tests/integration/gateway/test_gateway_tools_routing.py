"""Tools and response formats in the pipeline: rules that match them, refusal (400) of
what no expert can honour, local answers checked against the requested format
(`invalid_format`), and the governance record (audit lines, metrics; names only)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from tests.integration.gateway.conftest import chat, expert_config, gateway_config

TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "parameters": {"type": "object", "properties": {"order": {"type": "string"}}},
    },
}
SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer"}},
    "required": ["n"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "Count", "schema": SCHEMA}}


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any, Any]:
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        return resp.status, resp.headers.copy(), await resp.json(content_type=None)


async def _metrics(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics") as resp:
        return await resp.text()


async def test_rules_send_tool_use_and_json_schema_to_an_expert(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.99)
    expert = await start_sim(name="e1")
    policy = {
        "rules": [
            {"name": "tools", "when": {"hasTools": True}, "action": "expert"},
            {"name": "schemas", "when": {"responseFormats": ["json_schema"]}, "action": "expert"},
        ]
    }
    gw = await start_gateway(
        gateway_config(pool=pool.url, experts={"e1": expert_config(expert.url)}, policy=policy)
    )
    status, headers, body = await _post(http, gw.url, chat("my order 123?", tools=[TOOL]))
    assert status == 200, body
    assert headers["x-kascade-route"] == "expert:e1"
    assert headers["x-kascade-reason"] == "rule"
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup_order"
    status, headers, body = await _post(http, gw.url, chat("count", response_format=FORMAT))
    assert status == 200, body
    assert headers["x-kascade-route"] == "expert:e1"
    assert json.loads(body["choices"][0]["message"]["content"]) == {"n": 1}
    # Neither tools nor a schema: no rule matches, the confident pool answers.
    status, headers, _ = await _post(http, gw.url, chat("hello"))
    assert headers["x-kascade-route"] == "local"
    assert pool.records
    assert all("tools" not in r["body"] for r in pool.records)
    assert [line["rule_name"] for line in gw.audit()] == ["tools", "schemas", None]


async def test_unsupported_parameter_is_refused_with_its_name_before_anything_runs(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    claude = await start_sim(name="claude")
    gpt = await start_sim(name="gpt")
    experts = {"claude": expert_config(claude.url, provider="anthropic")}
    gw = await start_gateway(gateway_config(pool=pool.url, experts=experts))
    status, _, body = await _post(http, gw.url, chat("hi", logprobs=True, top_logprobs=2))
    assert status == 400
    assert body["error"]["param"] == "logprobs"
    assert body["error"]["code"] == "unsupported_parameter"
    assert "claude" in body["error"]["message"]
    assert pool.records == []
    assert claude.records == []
    # With an OpenAI expert in the policy too, the request goes there, untouched.
    experts["gpt"] = expert_config(gpt.url)
    gw2 = await start_gateway(gateway_config(pool=pool.url, experts=experts), name="gw2")
    status, headers, body = await _post(http, gw2.url, chat("hi", logprobs=True, top_logprobs=2))
    assert status == 200, body
    assert headers["x-kascade-route"] == "expert:gpt"
    assert gpt.records[-1]["body"]["logprobs"] is True
    assert gpt.records[-1]["body"]["top_logprobs"] == 2
    assert claude.records == []


async def test_unknown_parameter_is_refused_by_name(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.99)
    gw = await start_gateway(gateway_config(pool=pool.url, experts={}))
    status, _, body = await _post(http, gw.url, chat("hi", temprature=0.2))
    assert status == 400
    assert body["error"]["param"] == "temprature"
    assert "temprature" in body["error"]["message"]
    status, _, body = await _post(
        http, gw.url, chat("hi", tools=[TOOL], tool_choice={"type": "function",
                                                            "function": {"name": "nope"}})
    )  # fmt: skip
    assert status == 400
    assert body["error"]["param"] == "tool_choice.function.name"
    assert pool.records == []


async def test_local_answer_that_breaks_the_schema_escalates_as_invalid_format(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.99, answer="not json at all")
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(pool=pool.url, experts={"e1": expert_config(expert.url)})
    )
    status, headers, body = await _post(http, gw.url, chat("count", response_format=FORMAT))
    assert status == 200, body
    assert headers["x-kascade-route"] == "expert:e1"
    assert headers["x-kascade-reason"] == "invalid_format"
    assert json.loads(body["choices"][0]["message"]["content"]) == {"n": 1}
    # JSON, but not what the schema asks for.
    pool.set(answer=json.dumps({"m": 2}))
    status, headers, body = await _post(http, gw.url, chat("count", response_format=FORMAT))
    assert headers["x-kascade-reason"] == "invalid_format"
    # A valid local answer is returned as is.
    pool.set(answer=json.dumps({"n": 7}))
    status, headers, body = await _post(http, gw.url, chat("count", response_format=FORMAT))
    assert headers["x-kascade-route"] == "local"
    assert json.loads(body["choices"][0]["message"]["content"]) == {"n": 7}
    problems = [line["format_problem"] for line in gw.audit()]
    assert problems == [
        "answer is not JSON",
        "answer does not follow the schema at (root): additionalProperties failed",
        None,
    ]
    text = await _metrics(http, gw.url)
    assert (
        'kascade_escalations_total{expert="e1",policy="default",reason="invalid_format"} 2.0'
        in text
    )


async def test_tool_governance_in_audit_and_metrics(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(pool=pool.url, experts={"e1": expert_config(expert.url)})
    )
    other = {"type": "function", "function": {"name": "cancel_order"}}
    status, _, body = await _post(http, gw.url, chat("order ZX-9931", tools=[TOOL, other]))
    assert status == 200, body
    streamed = chat("order ZX-9931", tools=[TOOL], stream=True)
    async with http.post(f"{gw.url}/v1/chat/completions", json=streamed) as resp:
        assert resp.status == 200
        assert '"name": "lookup_order"' in await resp.text()
    lines = gw.audit()
    assert [line["tools_offered"] for line in lines] == [
        ["lookup_order", "cancel_order"],
        ["lookup_order"],
    ]
    assert [line["tool_calls"] for line in lines] == [["lookup_order"], ["lookup_order"]]
    assert "ZX-9931" not in json.dumps(lines)  # the call's arguments are never logged
    text = await _metrics(http, gw.url)
    assert 'kascade_tools_offered_total{policy="default",tool="lookup_order"} 2.0' in text
    assert 'kascade_tools_offered_total{policy="default",tool="cancel_order"} 1.0' in text
    assert 'kascade_tool_calls_total{expert="e1",policy="default",tool="lookup_order"} 2.0' in text


async def test_local_stream_without_experts_records_its_tool_calls(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.9)
    gw = await start_gateway(gateway_config(pool=pool.url, experts={}))
    body = chat("order ZX-1", tools=[TOOL], stream=True)
    async with http.post(f"{gw.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        text = await resp.text()
    assert '"name": "lookup_order"' in text  # the pool's stream, copied through
    assert pool.records[-1]["body"]["stream"] is True
    [line] = gw.audit()
    assert line["route"] == "local"
    assert line["tool_calls"] == ["lookup_order"]


async def test_include_prompts_audits_redacted_text_and_tool_arguments(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.1)
    expert = await start_sim(name="e1")
    experts = {"e1": expert_config(expert.url, allowPersonalData=True)}
    privacy = {"action": "allow", "detectors": ["email"]}
    policy = {"privacy": privacy, "audit": {"includePrompts": True}}
    gw = await start_gateway(gateway_config(pool=pool.url, experts=experts, policy=policy))
    prompt = "order ZX-2 for ann@example.com"
    status, _, body = await _post(http, gw.url, chat(prompt, tools=[TOOL]))
    assert status == 200, body
    # The expert may receive the address (allow), and its call's arguments repeat it...
    arguments = body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"order": prompt}
    # ...but the audit line holds both only redacted.
    [line] = gw.audit()
    redacted = "order ZX-2 for [REDACTED:EMAIL]"
    assert line["messages"] == [{"role": "user", "text": redacted}]
    assert line["tool_call_arguments"] == [json.dumps({"order": redacted}, separators=(",", ":"))]
    assert "ann@example.com" not in json.dumps(line)
    # Without includePrompts (the default) neither appears.
    gw2 = await start_gateway(
        gateway_config(pool=pool.url, experts=experts, policy={"privacy": privacy}),
        name="gw2",
    )
    await _post(http, gw2.url, chat(prompt, tools=[TOOL]))
    [plain] = gw2.audit()
    assert "messages" not in plain
    assert "tool_call_arguments" not in plain
    assert plain["tool_calls"] == ["lookup_order"]


async def test_invalid_format_without_experts_returns_the_local_answer(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.99, answer="nope")
    gw = await start_gateway(gateway_config(pool=pool.url, experts={}))
    status, headers, body = await _post(http, gw.url, chat("count", response_format=FORMAT))
    assert status == 200
    assert headers["x-kascade-route"] == "local"
    assert headers["x-kascade-reason"] == "no_experts"
    assert body["choices"][0]["message"]["content"] == "nope"
    [line] = gw.audit()
    assert line["format_problem"] == "answer is not JSON"
