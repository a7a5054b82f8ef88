"""Pre-generation rules: route by prompt length, task label, an explicit header, tools
offered or the response format asked for."""

from __future__ import annotations

from collections.abc import Mapping

from kascade.api import wire
from kascade.gateway import config as config_mod

TASK_HEADER = wire.TASK_HEADER


def match(
    *,
    rules: list[config_mod.Rule],
    prompt_tokens: int,
    headers: Mapping[str, str],
    has_tools: bool = False,
    response_format: str | None = None,
) -> tuple[int, config_mod.Rule] | None:
    """First rule whose every set condition holds, with its index; None if none does."""
    if not rules:
        return None
    # Header names are matched case-insensitively whatever mapping the server passes.
    lowered = {k.lower(): v for k, v in headers.items()}
    for index, rule in enumerate(rules):
        when = rule.when
        if when.min_prompt_tokens is not None and prompt_tokens < when.min_prompt_tokens:
            continue
        if when.max_prompt_tokens is not None and prompt_tokens > when.max_prompt_tokens:
            continue
        if when.task_labels is not None and lowered.get(TASK_HEADER) not in when.task_labels:
            continue
        if when.has_tools is not None and when.has_tools != has_tools:
            continue
        if when.response_formats is not None and (
            (response_format or "text") not in when.response_formats
        ):
            continue
        if when.header is not None:
            value = lowered.get(when.header.name.lower())
            if value is None or (when.header.values and value not in when.header.values):
                continue
        return index, rule
    return None


def task_label(*, rules: list[config_mod.Rule], headers: Mapping[str, str]) -> str:
    """The request's task label as a metric label: the `x-kascade-task` value when one
    of the policy's rules names it, ``other`` for any other value, ``none`` without the
    header. Bounded by the config, so a client cannot grow the metric's series."""
    value = headers.get(TASK_HEADER)
    if value is None:
        return "none"
    for rule in rules:
        labels = rule.when.task_labels
        if labels is not None and value in labels:
            return value
    return "other"
