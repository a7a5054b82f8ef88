"""The scan of everything a request would send out of the cluster.

The walk is generic on purpose: every string anywhere in the messages (content parts of
every type, `name`, tool call names and arguments, tool results, fields a client adds)
and in every forwarded parameter (tools and their JSON schemas, `stop`, `user`,
`metadata`, whatever the request module forwards next) is scanned, and so are dict keys
and long integers. A new forwarded parameter is covered without a change here.

Strings that hold JSON (tool call arguments, JSON tool results) are parsed, scanned
value by value and serialised again, so redaction keeps them valid JSON and PII hidden
behind `\\u0040` escapes is found. Binary payloads (base64 images, audio, files) cannot
be scanned; they are reported by path so the caller can refuse or keep them local.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kascade.gateway.privacy import checksums, redaction

# Numeric sampling parameters: their integers are settings, not data.
_SETTINGS = frozenset(
    {
        "temperature",
        "top_p",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "logprobs",
        "top_logprobs",
        "logit_bias",
    }
)
# Integers this long can be card, phone or ID numbers written as JSON numbers.
_MIN_NUMBER = 1_000_000
# Parts whose payload is raw base64 without a `data:` prefix. File parts carry a
# `data:` URL (caught as a string) or a file id the provider already holds.
_BINARY_TYPES = frozenset({"input_audio"})


@dataclass
class RequestScan:
    """What the scan found, and the redacted copies (None where nothing changed)."""

    counts: dict[str, int] = field(default_factory=dict)
    messages: list[dict[str, Any]] | None = None
    params: dict[str, Any] | None = None
    unscannable: list[str] = field(default_factory=list)
    """Paths of binary parts (`messages[1].content[0]`) no detector can read."""

    @property
    def found(self) -> bool:
        return bool(self.counts)


class _Walk:
    def __init__(self, scanner: redaction.Scanner, scan: RequestScan) -> None:
        self._redact: Callable[[str, str], str] = lambda text, context: scanner.redact_text(
            text, counts=scan.counts, context=context
        )
        self._scan = scan

    def value(self, value: Any, path: str, key: str = "") -> Any:
        """The value with personal data redacted (the same object when nothing was);
        `key` is the JSON key it sits under, read as context."""
        if isinstance(value, str):
            return self.string(value, path, key)
        if isinstance(value, dict):
            return self.mapping(value, path)
        if isinstance(value, list):
            items = [self.value(item, f"{path}[{i}]", key) for i, item in enumerate(value)]
            return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _MIN_NUMBER:
            text = str(value)
            redacted = self._redact(text, key)
            return value if redacted == text else redacted
        return value

    def string(self, text: str, path: str, key: str = "") -> Any:
        if _is_binary(text):
            self._scan.unscannable.append(path)
            return text
        stripped = text.strip()
        if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
            try:
                parsed = json.loads(stripped)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict | list):
                redacted = self.value(parsed, path)
                if redacted is parsed:
                    return text
                return json.dumps(redacted, ensure_ascii=False)
        return self._redact(text, key)

    def mapping(self, value: dict[str, Any], path: str) -> dict[str, Any]:
        if _binary_part(value):
            self._scan.unscannable.append(path)
            return value
        out: dict[str, Any] = {}
        changed = False
        for key, item in value.items():
            new_key = self._redact(key, "") if isinstance(key, str) else key
            while new_key != key and new_key in out:
                new_key += "_"  # two redacted keys must not overwrite each other
            new_item = self.value(item, f"{path}.{key}" if path else key, key)
            changed = changed or new_key != key or new_item is not item
            out[new_key] = new_item
        return out if changed else value


def _is_binary(text: str) -> bool:
    return text.startswith("data:") and ";base64," in text[:200]


def _binary_part(part: dict[str, Any]) -> bool:
    """Audio parts carry raw base64; Anthropic-style image sources too."""
    kind = part.get("type")
    if kind in _BINARY_TYPES:
        return True
    return kind == "base64" and isinstance(part.get("data"), str)


def scan_request(
    scanner: redaction.Scanner, *, messages: list[dict[str, Any]], params: dict[str, Any]
) -> RequestScan:
    """Scans every field that could leave the cluster; the inputs are not modified."""
    scan = RequestScan()
    if not scanner.enabled:
        return scan
    with checksums.phone_budget():
        _walk_request(_Walk(scanner, scan), scan, messages=messages, params=params)
    return scan


def _walk_request(
    walk: _Walk, scan: RequestScan, *, messages: list[dict[str, Any]], params: dict[str, Any]
) -> None:
    new_messages = [walk.mapping(m, f"messages[{i}]") for i, m in enumerate(messages)]
    if any(a is not b for a, b in zip(new_messages, messages, strict=True)):
        scan.messages = new_messages
    new_params: dict[str, Any] = {}
    for key, value in params.items():
        new_params[key] = value if key in _SETTINGS else walk.value(value, key, key)
    if any(new_params[k] is not params[k] for k in params):
        scan.params = new_params
