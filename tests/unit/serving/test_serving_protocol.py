"""Request validation: every rule a client can break answers 400 naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kascade.serving import protocol

MSGS = [{"role": "user", "content": "hi"}]


def _parse(body: Any) -> protocol.ChatRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return protocol.parse_chat_request(raw)


def test_minimal_request_gets_openai_defaults() -> None:
    request = _parse({"messages": MSGS})
    assert request.temperature == 1.0
    assert request.top_p == 1.0
    assert request.stream is False
    assert request.requested_max_tokens is None
    assert request.stop_sequences == ()


def test_accepted_shapes() -> None:
    request = _parse(
        {
            "model": "anything",
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
            "temperature": 0,
            "max_completion_tokens": 9,
            "max_tokens": 3,
            "stop": "END",
            "seed": 4,
            "user": "ignored-extra-field",
        }
    )
    assert request.temperature == 0.0
    assert request.messages[1].text == "ab"
    assert request.requested_max_tokens == 9
    assert request.stop_sequences == ("END",)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{oops", None, "invalid_json"),
        (b"\xff\xfe", None, "invalid_json"),
        (b'"a string"', None, "invalid_json"),
        ({}, "messages", "missing_required_parameter"),
        ({"messages": []}, "messages", "invalid_value"),
        ({"messages": "hi"}, "messages", "invalid_value"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", "invalid_value"),
        ({"messages": [{"content": "x"}]}, "messages.0.role", "missing_required_parameter"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "invalid_value"),
        ({"messages": MSGS, "max_tokens": "10"}, "max_tokens", "invalid_value"),
        ({"messages": MSGS, "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"messages": MSGS, "temperature": 2.5}, "temperature", "invalid_value"),
        ({"messages": MSGS, "temperature": True}, "temperature", "invalid_value"),
        ({"messages": MSGS, "top_p": 0}, "top_p", "invalid_value"),
        ({"messages": MSGS, "stream": "yes"}, "stream", "invalid_value"),
        ({"messages": MSGS, "n": 2}, "n", "invalid_value"),
        ({"messages": MSGS, "stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"messages": MSGS, "stop": [""]}, "stop", "invalid_value"),
    ],
)
def test_bad_requests(body: Any, param: str | None, code: str) -> None:
    with pytest.raises(protocol.ApiError) as info:
        _parse(body)
    error = info.value
    assert error.status == 400
    body_ = protocol.error_body(error)
    assert body_["error"]["param"] == param
    assert body_["error"]["code"] == code
    assert body_["error"]["type"] == "invalid_request_error"
    if param:
        assert param in body_["error"]["message"]


def test_sse_event_format() -> None:
    assert protocol.sse_event("[DONE]") == b"data: [DONE]\n\n"
    assert protocol.sse_event({"a": 1}) == b'data: {"a":1}\n\n'
