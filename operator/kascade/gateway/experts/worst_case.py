"""The worst-case cost of one expert call, bounded over the bytes actually sent.

The bound is computed from the serialized outbound request the provider adapter
built, not from a list of fields, so whatever the adapter forwards (messages, tool
definitions, tool call arguments, any future parameter) is counted:

- prompt tokens <= the request's UTF-8 bytes, because every BPE token covers at
  least one byte; image parts are the exception (a URL of 60 bytes may cost
  hundreds of tokens, a base64 payload of a megabyte far fewer than its bytes), so
  each image part's bytes are replaced by a per-image ceiling from the expert's
  pricing (``maxTokensPerImage``, default ``DEFAULT_TOKENS_PER_IMAGE``);
- completion tokens <= the ``max_tokens`` the request carries (the adapter always
  sets one), times the number of choices.

No accepted call can settle above this bound unless the provider reports usage it
could not have produced; the escalator counts that as a bug
(``kascade_expert_usage_above_reservation_total``).
"""

from __future__ import annotations

import decimal
import functools
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kascade.gateway import config as config_mod

DEFAULT_TOKENS_PER_IMAGE = config_mod.DEFAULT_TOKENS_PER_IMAGE

# Content part types that carry an image, in the OpenAI chat, OpenAI responses and
# Anthropic messages dialects.
IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})

# Output-length parameters of the dialects, in the order a provider honours them.
_MAX_TOKEN_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


class Unbounded(ValueError):
    """The request sets no output limit, so its cost has no bound: it is not sent."""


@dataclass(frozen=True)
class Bound:
    """Upper bounds of one call: tokens and nano-USD (rounded up)."""

    prompt_tokens: int
    completion_tokens: int
    images: int
    nanos: int


@functools.lru_cache(maxsize=256)
def _nanos_per_token(pricing: config_mod.Pricing) -> tuple[Decimal, Decimal]:
    # USD per million tokens == thousand nano-USD per token; exact in Decimal.
    return (
        Decimal(str(pricing.input_per_million_tokens)) * 1000,
        Decimal(str(pricing.output_per_million_tokens)) * 1000,
    )


def cost_nanos(*, pricing: config_mod.Pricing, prompt_tokens: int, completion_tokens: int) -> int:
    """Cost of a call in nano-USD, rounded up (same rounding as ledger.usd_to_nanos)."""
    per_in, per_out = _nanos_per_token(pricing)
    total = prompt_tokens * per_in + completion_tokens * per_out
    return int(total.to_integral_value(rounding=decimal.ROUND_CEILING))


def _images(node: Any) -> tuple[int, int]:
    """(image parts, their serialized bytes) anywhere in a decoded JSON document."""
    count = size = 0
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") in IMAGE_PART_TYPES:
                count += 1
                # The smallest serialization, so no more is dropped than was sent.
                size += len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode())
                continue
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
    return count, size


def max_output_tokens(body: dict[str, Any]) -> int:
    """The output limit the request carries, times its choices; Unbounded if none."""
    for key in _MAX_TOKEN_KEYS:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            n = body.get("n", 1)
            choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
            return value * choices
    raise Unbounded("the outbound request sets no max_tokens")


def bound(*, body: bytes, pricing: config_mod.Pricing) -> Bound:
    """The worst case of sending ``body`` (a JSON request) to an expert priced ``pricing``."""
    decoded = json.loads(body)
    if not isinstance(decoded, dict):
        raise Unbounded("the outbound request is not a JSON object")
    images, image_bytes = _images(decoded)
    per_image = pricing.max_tokens_per_image
    # Each image part is in len(body) with at least image_bytes bytes: dropping those
    # and adding the ceiling keeps the bound above every text token and image.
    prompt = max(0, len(body) - image_bytes) + images * per_image
    completion = max_output_tokens(decoded)
    return Bound(
        prompt_tokens=prompt,
        completion_tokens=completion,
        images=images,
        nanos=cost_nanos(pricing=pricing, prompt_tokens=prompt, completion_tokens=completion),
    )
