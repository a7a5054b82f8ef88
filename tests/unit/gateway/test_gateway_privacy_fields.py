"""The privacy walk: every string a request could send out is scanned, JSON stays JSON."""

from __future__ import annotations

import copy
import json
from typing import Any

from kascade.gateway import config
from kascade.gateway.privacy import detectors, fields
from kascade.gateway.privacy import redaction as privacy

EMAIL = "jane.doe@example.com"
PHONE = "+44 20 7946 0958"
CARD = "4111 1111 1111 1111"
SCANNER = privacy.Scanner(privacy=config.PrivacyConfig(detectors=list(detectors.KINDS)))


def _scan(messages: list[dict[str, Any]], params: dict[str, Any] | None = None) -> Any:
    before = copy.deepcopy((messages, params))
    result = fields.scan_request(SCANNER, messages=messages, params=params or {})
    assert (messages, params) == before  # the originals stay untouched (the pool gets them)
    return result


def test_every_message_field_is_scanned() -> None:
    messages = [
        {"role": "system", "content": f"escalate to {EMAIL}"},
        {"role": "user", "name": EMAIL, "content": [
            {"type": "text", "text": f"call {PHONE}"},
            {"type": "image_url", "image_url": {"url": f"https://img.example/{EMAIL}.png"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": json.dumps({"to": EMAIL, "tel": PHONE})},
        }]},
        {"role": "tool", "tool_call_id": "call_1", "content": f"found card {CARD}"},
    ]  # fmt: skip
    result = _scan(messages)
    sent = json.dumps(result.messages)
    for secret in (EMAIL, PHONE, CARD, "4111"):
        assert secret not in sent
    assert result.counts == {"email": 4, "phone": 2, "credit-card": 1}
    assert result.messages[1]["name"] == "[REDACTED:EMAIL]"
    # The whole address-shaped run goes (".png" is a valid domain label).
    assert result.messages[1]["content"][1]["image_url"]["url"] == (
        "https://img.example/[REDACTED:EMAIL]"
    )
    assert result.unscannable == []


def test_tool_arguments_stay_valid_json() -> None:
    arguments = json.dumps({"to": EMAIL, "card": 4111111111111111, "note": "x\u0040y.io"})
    arguments = arguments.replace("@", "\\u0040")  # escapes do not hide an address
    call = {"id": "c", "type": "function", "function": {"name": "pay", "arguments": arguments}}
    result = _scan([{"role": "assistant", "content": None, "tool_calls": [call]}])
    sent = result.messages[0]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(sent) == {
        "to": "[REDACTED:EMAIL]",
        "card": "[REDACTED:CREDIT-CARD]",
        "note": "[REDACTED:EMAIL]",
    }


def test_invalid_json_arguments_are_scanned_as_text() -> None:
    call = {"function": {"name": "f", "arguments": f'{{"to": "{EMAIL}", '}}
    result = _scan([{"role": "assistant", "content": None, "tool_calls": [call]}])
    assert EMAIL not in json.dumps(result.messages)


def test_every_forwarded_parameter_is_scanned_and_settings_are_kept() -> None:
    params = {
        "temperature": 0.2,
        "seed": 41111111111111111,  # a setting, even when it looks like a card
        "stop": [f"mail {EMAIL}"],
        "user": EMAIL,
        "metadata": {EMAIL: "owner", "phone": 442079460958},
        "tools": [{"type": "function", "function": {
            "name": "notify", "description": f"sends mail to {EMAIL}",
            "parameters": {"type": "object", "properties": {"to": {"default": PHONE}}},
        }}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "description": f"card {CARD}"}}},
    }  # fmt: skip
    result = _scan([{"role": "user", "content": "hi"}], params)
    assert result.messages is None  # nothing to redact there: the same list is sent
    sent = json.dumps(result.params)
    for secret in (EMAIL, PHONE, CARD, "4111 1111"):
        assert secret not in sent
    assert result.params["seed"] == params["seed"]
    assert result.params["temperature"] == 0.2
    assert result.params["metadata"] == {"[REDACTED:EMAIL]": "owner", "phone": "[REDACTED:PHONE]"}


def test_binary_parts_are_reported_by_path() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    pdf = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"},
    }
    stored = {"type": "file", "file": {"file_id": "file-abc123"}}  # the provider holds it
    source = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iV"},
    }
    parts = [{"type": "text", "text": "hi"}, image, audio, pdf, stored, source]
    result = _scan([{"role": "user", "content": parts}])
    assert result.unscannable == [
        "messages[0].content[1].image_url.url",
        "messages[0].content[2]",
        "messages[0].content[3].file.file_data",
        "messages[0].content[5].source",
    ]
    assert result.counts == {}
