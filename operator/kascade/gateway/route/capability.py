"""Which of a policy's experts can honour a request as sent (tools, formats, images,
sampling parameters): the others are left out, and when none is left the request is
refused with a 400 naming the parameter, before anything runs."""

from __future__ import annotations

from kascade.gateway.endpoints import errors
from kascade.gateway.experts import escalation, providers
from kascade.gateway.route import request


def capable(
    *, experts: list[escalation.ExpertState], chat: request.ChatRequest
) -> list[escalation.ExpertState]:
    """The experts that can take this request; raises ApiError(400) if none can."""
    kept: list[escalation.ExpertState] = []
    refusals: list[tuple[str, providers.Unsupported]] = []
    for expert in experts:
        try:
            providers.check(
                provider=expert.config.provider, messages=chat.messages, params=chat.params
            )
        except providers.Unsupported as exc:
            refusals.append((expert.name, exc))
            continue
        kept.append(expert)
    if experts and not kept:
        name, first = refusals[0]
        raise errors.ApiError(
            status=400,
            message=f"{first} (expert `{name}`, provider "
            f"{experts[0].config.provider}); no expert of this policy can honour the request.",
            param=first.param,
            code="unsupported_parameter",
        )
    return kept
