"""What a chat request needs from an expert (CloudExpert `capabilities`).

An expert that lists its capabilities is skipped for requests needing one it lacks
(`lacks_tools`, `lacks_vision`, ... in the attempt record), before anything is
reserved; an expert without a list takes every request.
"""

from __future__ import annotations

from typing import Any

from kascade.gateway.experts import worst_case


def required(body: dict[str, Any]) -> frozenset[str]:
    """The capabilities ``body`` (an OpenAI chat request) needs."""
    needs = {"chat"}
    if body.get("stream") is True:
        needs.add("streaming")
    if body.get("tools") or body.get("functions") or body.get("tool_choice"):
        needs.add("tools")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        needs.add("json-mode")
    if body.get("logprobs") or body.get("top_logprobs"):
        needs.add("logprobs")
    if _has_image(body.get("messages")):
        needs.add("vision")
    return frozenset(needs)


def _has_image(messages: object) -> bool:
    if not isinstance(messages, list):
        return False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in worst_case.IMAGE_PART_TYPES:
                    return True
    return False
