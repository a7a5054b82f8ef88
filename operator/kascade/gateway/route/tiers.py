"""Which local tier answers a prompt: the first, in the policy's order, whose
``maxPromptTokens`` takes the prompt's estimated length."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Limited(Protocol):
    @property
    def max_prompt_tokens(self) -> int | None: ...


T = TypeVar("T", bound=Limited)


def first_fitting(tiers: Sequence[T], *, prompt_tokens: int) -> T | None:
    """The first tier without a limit or whose limit is at least ``prompt_tokens``;
    None when the prompt is longer than every tier takes."""
    for tier in tiers:
        if tier.max_prompt_tokens is None or prompt_tokens <= tier.max_prompt_tokens:
            return tier
    return None


def largest_limit(tiers: Sequence[Limited]) -> int | None:
    """The longest prompt any tier takes (None: some tier takes any length)."""
    limits = [tier.max_prompt_tokens for tier in tiers]
    if not limits or any(limit is None for limit in limits):
        return None
    return max(limit for limit in limits if limit is not None)
