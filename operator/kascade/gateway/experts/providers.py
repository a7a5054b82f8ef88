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
from kascade.gateway.experts import anthropic

ANTHROPIC_VERSION = "2023-06-01"


class Unsupported(ValueError):
    """A request an expert's provider cannot honour; `param` names the parameter."""

    def __init__(self, *, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def check(*, provider: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> None:
    """Raises Unsupported when the provider cannot honour the request as sent.

    OpenAI and Azure OpenAI take every forwarded parameter verbatim (the upstream
    itself answers 400 for a model that lacks a feature); Anthropic is translated.
    """
    if provider != "anthropic":
        return
    try:
        anthropic.check_params(params)
        anthropic.messages(messages)
    except anthropic.Unsupported as exc:
        raise Unsupported(param=exc.param, message=str(exc)) from None


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
    if expert.provider == "anthropic":
        body = anthropic.request_body(
            model=expert.model,
            openai_messages=messages,
            params=params,
            max_tokens=max_tokens,
            stream=stream,
        )
        headers["anthropic-version"] = ANTHROPIC_VERSION
        if api_key:
            headers["x-api-key"] = api_key
        url = f"{base}/v1/messages"
    else:
        # The client's own name for the limit is kept (reasoning models refuse
        # max_tokens); its value is the one resolved for this expert.
        limit = "max_completion_tokens" if "max_completion_tokens" in params else "max_tokens"
        body = {"model": expert.model, "messages": messages, **params, limit: max_tokens}
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


def tool_calls_of(completion: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names, arguments) of the function calls in an OpenAI-shaped answer."""
    names: list[str] = []
    arguments: list[str] = []
    for choice in completion.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls if isinstance(calls, list) else []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                names.append(function["name"])
                arguments.append(str(function.get("arguments") or ""))
    return tuple(names), tuple(arguments)


def tool_call_names(completion: dict[str, Any]) -> tuple[str, ...]:
    """Names of the functions an OpenAI-shaped answer calls (governance: names only)."""
    return tool_calls_of(completion)[0]


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
        completion, pt, ct = anthropic.completion(data, blocks=blocks)
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
    collects the usage and the tool calls the stream reports."""

    provider: str
    model: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    text: list[str] = field(default_factory=list)
    tool_names: list[str] = field(default_factory=list)
    """Names of the functions the streamed answer calls, in order."""
    tool_arguments: list[str] = field(default_factory=list)
    """Their arguments (JSON text), in the same order."""
    _id: str = field(default_factory=lambda: f"chatcmpl-{time.time_ns():x}")
    _anthropic: anthropic.StreamState = field(default_factory=anthropic.StreamState)

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
        if self.provider == "anthropic":
            return self._from_anthropic(event)
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = _int(usage.get("prompt_tokens"))
            self.completion_tokens = _int(usage.get("completion_tokens"))
        for choice in event.get("choices") or []:
            if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                self._observe(choice["delta"])
        return b"data: " + payload + b"\n\n"

    def _observe(self, delta: dict[str, Any]) -> None:
        content = delta.get("content")
        if isinstance(content, str):
            self.text.append(content)
        for call in delta.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                continue
            name = function.get("name")
            if isinstance(name, str) and name:  # only a call's first delta names it
                self.tool_names.append(name)
                self.tool_arguments.append("")
            arguments = function.get("arguments")
            if isinstance(arguments, str) and self.tool_arguments:
                self.tool_arguments[-1] += arguments

    def _from_anthropic(self, event: dict[str, Any]) -> bytes | None:
        state = self._anthropic
        out = state.delta(event)
        self.model = state.model
        self.prompt_tokens = state.prompt_tokens
        self.completion_tokens = state.completion_tokens
        if out is None:
            return None
        if out.done:
            # Usage as the OpenAI adapter's streams carry it (the gateway asks for it).
            if self.prompt_tokens is None or self.completion_tokens is None:
                return b"data: [DONE]\n\n"
            usage = {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            }
            return self._event(choices=[], usage=usage) + b"data: [DONE]\n\n"
        self._observe(out.delta)
        choice = {"index": 0, "delta": out.delta, "finish_reason": out.finish}
        return self._event(choices=[choice])

    def _event(self, **fields: Any) -> bytes:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            **fields,
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"
