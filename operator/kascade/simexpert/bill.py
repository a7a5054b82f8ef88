"""The simulated expert's own bill: what it would charge, counted independently of
the gateway's ledger, so a test can check the ledger never under-counts it.

A request is billed when generation starts (every request that reached the expert
and was not refused before generation: 4xx refusals are free, a 5xx is billed as if
it had generated up to ``max_tokens`` and then failed). A client that disconnects
does not stop the bill. Amounts are integer nano-USD rounded up per request, the
same rounding as the gateway's ledger.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# Content part types that carry an image (OpenAI chat / responses, Anthropic).
IMAGE_TYPES = frozenset({"image_url", "input_image", "image"})


@dataclass
class Bill:
    """Running totals of one simulator."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    nanos: int = 0
    lines: list[dict[str, Any]] = field(default_factory=list)

    def charge(
        self,
        *,
        n: int,
        prompt_tokens: int,
        completion_tokens: int,
        input_per_million: float,
        output_per_million: float,
        why: str,
    ) -> int:
        """Adds one request to the bill; returns its nano-USD."""
        nanos = cost_nanos(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            input_per_million=input_per_million,
            output_per_million=output_per_million,
        )
        self.requests += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.nanos += nanos
        self.lines.append({"n": n, "nanos": nanos, "why": why})
        return nanos

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "nanos": self.nanos,
        }


def cost_nanos(
    *,
    prompt_tokens: int,
    completion_tokens: int,
    input_per_million: float,
    output_per_million: float,
) -> int:
    """USD per million tokens == thousand nano-USD per token; rounded up."""
    total = prompt_tokens * Decimal(str(input_per_million)) * 1000
    total += completion_tokens * Decimal(str(output_per_million)) * 1000
    return int(total.to_integral_value(rounding=decimal.ROUND_CEILING))


def byte_tokens(body: dict[str, Any], *, image_tokens: int) -> int:
    """The most prompt tokens a tokenizer could find: one per UTF-8 byte of every
    string the request carries (messages, system, tools, tool call arguments),
    plus ``image_tokens`` per image part."""
    total = 0
    stack: list[Any] = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") in IMAGE_TYPES:
                total += image_tokens
                continue
            for key, value in node.items():
                if key in ("model", "stream", "max_tokens"):
                    continue
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str):
            total += len(node.encode())
    return total


def max_tokens(body: dict[str, Any]) -> int:
    """The output limit the request sets (0 when none)."""
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0
