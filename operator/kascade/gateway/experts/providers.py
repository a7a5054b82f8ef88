"""Provider adapters: build the upstream HTTP request and read the answer back into
the OpenAI chat-completion shape (non-streaming and SSE)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kascade.gateway import config as config_mod

ANTHROPIC_VERSION = "2023-06-01"
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}
_PASS_PARAMS = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")


class CredentialError(RuntimeError):
    """An expert's credential could not be read (the message never contains it)."""


class Credentials:
    """Reads API keys from env or files; files are re-read when they change (rotation)."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[float, str]] = {}

    def get(self, creds: config_mod.Credentials | None) -> str | None:
        if creds is None:
            return None
        if creds.env is not None:
            value = os.environ.get(creds.env)
            if not value:
                raise CredentialError(f"environment variable {creds.env} is not set")
            return value.strip()
        assert creds.file is not None
        try:
            mtime = os.stat(creds.file).st_mtime
        except OSError as exc:
            raise CredentialError(
                f"cannot read credentials file {creds.file}: {exc.strerror}"
            ) from None
        cached = self._files.get(creds.file)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        value = Path(creds.file).read_text(encoding="utf-8").strip()
        self._files[creds.file] = (mtime, value)
        return value


@dataclass(frozen=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes


def build_request(
    *,
    expert: config_mod.ExpertConfig,
    api_key: str | None,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    max_tokens: int,
    stream: bool,
) -> UpstreamRequest:
    """The HTTP request for one expert call in its provider's dialect."""
    base = expert.endpoint.rstrip("/")
    headers = {"content-type": "application/json"}
    extra = {k: params[k] for k in _PASS_PARAMS if k in params}
    if expert.provider == "anthropic":
        system = "\n\n".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
        body: dict[str, Any] = {
            "model": expert.model,
            "max_tokens": max_tokens,
            "messages": [
                {"role": m.get("role"), "content": _text(m.get("content"))}
                for m in messages
                if m.get("role") != "system"
            ],
        }
        if system:
            body["system"] = system
        for key in ("temperature", "top_p"):
            if key in extra:
                body[key] = extra[key]
        if "stop" in extra:
            stop = extra["stop"]
            body["stop_sequences"] = [stop] if isinstance(stop, str) else stop
        if stream:
            body["stream"] = True
        headers["anthropic-version"] = ANTHROPIC_VERSION
        if api_key:
            headers["x-api-key"] = api_key
        url = f"{base}/v1/messages"
    else:
        body = {"model": expert.model, "messages": messages, "max_tokens": max_tokens, **extra}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if expert.provider == "azure-openai":
            url = (
                f"{base}/openai/deployments/{expert.model}/chat/completions"
                f"?api-version={expert.api_version}"
            )
            if api_key:
                headers["api-key"] = api_key
        else:
            url = f"{base}/v1/chat/completions"
            if api_key:
                headers["authorization"] = f"Bearer {api_key}"
    return UpstreamRequest(url=url, headers=headers, body=json.dumps(body).encode())


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


@dataclass(frozen=True)
class Answer:
    """An expert's answer in OpenAI shape with the usage it reported (None if absent)."""

    completion: dict[str, Any]
    prompt_tokens: int | None
    completion_tokens: int | None
    raw: bytes | None = None
    """The upstream body when it already is the OpenAI answer (sent on unchanged)."""


class BadUpstreamBody(ValueError):
    """The expert answered 2xx with a body that is not a chat completion."""


def parse_answer(*, provider: str, data: Any, raw: bytes | None = None) -> Answer:
    """Reads a provider's non-streaming answer."""
    if not isinstance(data, dict):
        raise BadUpstreamBody("answer is not a JSON object")
    if provider == "anthropic":
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise BadUpstreamBody("anthropic answer has no content list")
        text = "".join(
            str(b.get("text", ""))
            for b in blocks
            if isinstance(b, dict) and b.get("type") == "text"
        )
        usage = _dict(data.get("usage"))
        pt, ct = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
        completion = {
            "id": str(data.get("id", "")),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(data.get("model", "")),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": _FINISH.get(str(data.get("stop_reason")), "stop"),
                }
            ],
            "usage": {
                "prompt_tokens": pt or 0,
                "completion_tokens": ct or 0,
                "total_tokens": (pt or 0) + (ct or 0),
            },
        }
        return Answer(completion=completion, prompt_tokens=pt, completion_tokens=ct)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise BadUpstreamBody("answer has no choices")
    usage = _dict(data.get("usage"))
    return Answer(
        completion=data,
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        raw=raw,
    )


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass
class StreamTranslator:
    """Turns a provider's SSE lines into OpenAI `chat.completion.chunk` SSE lines and
    collects the usage the stream reports."""

    provider: str
    model: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    text: list[str] = field(default_factory=list)
    _id: str = field(default_factory=lambda: f"chatcmpl-{time.time_ns():x}")

    def feed(self, line: bytes) -> bytes | None:
        """One upstream line in; the bytes to forward (or None to drop it)."""
        stripped = line.strip()
        if not stripped.startswith(b"data:"):
            return None
        payload = stripped[5:].strip()
        if payload == b"[DONE]":
            return b"data: [DONE]\n\n" if self.provider != "anthropic" else None
        try:
            event = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(event, dict):
            return None
        if self.provider != "anthropic":
            usage = event.get("usage")
            if isinstance(usage, dict):
                self.prompt_tokens = _int(usage.get("prompt_tokens"))
                self.completion_tokens = _int(usage.get("completion_tokens"))
            for choice in event.get("choices") or []:
                if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                    content = choice["delta"].get("content")
                    if isinstance(content, str):
                        self.text.append(content)
            return b"data: " + payload + b"\n\n"
        return self._anthropic(event)

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> bytes:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def _anthropic(self, event: dict[str, Any]) -> bytes | None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.model = str(message.get("model", ""))
            usage = message.get("usage") or {}
            self.prompt_tokens = _int(usage.get("input_tokens"))
            return self._chunk({"role": "assistant", "content": ""}, None)
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            text = delta.get("text")
            if isinstance(text, str):
                self.text.append(text)
                return self._chunk({"content": text}, None)
            return None
        if kind == "message_delta":
            usage = event.get("usage") or {}
            self.completion_tokens = _int(usage.get("output_tokens"))
            reason = (event.get("delta") or {}).get("stop_reason")
            return self._chunk({}, _FINISH.get(str(reason), "stop"))
        if kind == "message_stop":
            return b"data: [DONE]\n\n"
        return None
