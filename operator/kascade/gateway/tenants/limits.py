"""Per-tenant limits on the request path: rate limits on admission, the money budget
as a second ledger book of every escalation, and the confidence offset.

Rate limits use the gateway's throttle backend and money uses its ledger, so with
Redis both are global across replicas, and a tenant's book is reserved in the same
atomic step as the expert's (see ``ledger.Book``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator

from kascade.gateway import ledger
from kascade.gateway.endpoints import errors
from kascade.gateway.experts import escalation
from kascade.gateway.route import request
from kascade.gateway.tenants import access


def books(caller: access.Caller) -> tuple[ledger.Book, ...]:
    """The ledger books an escalation of this caller reserves against besides the expert's."""
    tenant = caller.tenant
    if tenant is None or tenant.budget is None:
        return ()
    return (ledger.Book(name=tenant.book, budget=tenant.budget),)


def offset_threshold(threshold: float, *, caller: access.Caller) -> float:
    """The policy's threshold moved by the tenant's offset, within [0, 1]."""
    if caller.tenant is None:
        return threshold
    return min(1.0, max(0.0, threshold + caller.tenant.config.confidence_offset))


def _tokens(chat: request.ChatRequest, experts: list[escalation.ExpertState]) -> int:
    """Estimated prompt plus the most tokens an answer may have: the request's
    max_tokens, or without one the largest defaultMaxTokens among the policy's experts
    (what an expert is sent, and what its own tokensPerMinute counts). A local answer
    is not limited by the gateway, so a policy without experts counts only the prompt."""
    if chat.max_tokens is not None:
        return chat.prompt_estimate + chat.max_tokens
    return chat.prompt_estimate + max((e.config.default_max_tokens for e in experts), default=0)


@contextlib.asynccontextmanager
async def admitted(
    throttle: ledger.Throttle,
    *,
    caller: access.Caller,
    chat: request.ChatRequest,
    experts: list[escalation.ExpertState],
) -> AsyncIterator[None]:
    """Holds one of the tenant's rate-limit slots for the whole request, or raises 429."""
    tenant = caller.tenant
    if tenant is None or tenant.limits is None:
        yield
        return
    try:
        permit = await throttle.acquire(
            expert=tenant.book, limits=tenant.limits, tokens=_tokens(chat, experts)
        )
    except ledger.Throttled as exc:
        wait = max(1, math.ceil(exc.retry_after_s))
        raise errors.ApiError(
            status=429,
            message=f"Tenant `{tenant.name}` is over its {exc.limit} limit; retry in {wait}s.",
            type="rate_limit_error",
            code="tenant_rate_limited",
            headers={"retry-after": str(wait)},
        ) from None
    except ledger.LedgerUnavailable:
        raise errors.ApiError(
            status=503,
            message="The gateway cannot check your tenant's rate limits (its Redis is "
            "unreachable), so it refuses the request rather than exceed them.",
            type="server_error",
            code="limits_unavailable",
        ) from None
    try:
        yield
    finally:
        with contextlib.suppress(ledger.LedgerError):  # The slot expires on its own.
            await throttle.release(permit)


def raise_if_rejecting(tenant: access.TenantRuntime, *, summary: str) -> None:
    """429 when the tenant's spent budget stopped its escalation and it rejects then."""
    budget = tenant.config.budget
    if budget is None or budget.on_exhausted != "reject":
        return
    raise errors.ApiError(
        status=429,
        message=f"Tenant `{tenant.name}` has spent its budget of ${budget.limit_usd:g} for "
        f"this {budget.window} window; its requests that need a cloud expert are refused "
        f"until the window resets ({summary}).",
        type="insufficient_quota",
        code="tenant_budget_exhausted",
    )
