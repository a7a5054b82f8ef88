"""Pre-generation rules: route by prompt length, task label or an explicit header."""

from __future__ import annotations

from collections.abc import Mapping

from kascade.gateway import config as config_mod

TASK_HEADER = "x-kascade-task"


def match(
    *,
    rules: list[config_mod.Rule],
    prompt_tokens: int,
    headers: Mapping[str, str],
) -> tuple[int, config_mod.Rule] | None:
    """First rule whose every set condition holds, with its index; None if none does."""
    for index, rule in enumerate(rules):
        when = rule.when
        if when.prompt_tokens_over is not None and prompt_tokens <= when.prompt_tokens_over:
            continue
        if when.task_label is not None and headers.get(TASK_HEADER) != when.task_label:
            continue
        if when.header is not None and headers.get(when.header.name) != when.header.value:
            continue
        return index, rule
    return None
