"""Who a request comes from, and whether it may call the policy it names.

Order of refusals: a key that matches no tenant is 401; no key where keys are
required is 401 (unless the policy allows anonymous callers); a tenant calling a
policy it is not given is 403. None of the messages names another policy or tenant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from kascade.gateway import config as config_mod
from kascade.gateway import ledger
from kascade.gateway.endpoints import errors
from kascade.gateway.tenants import keys as keys_mod

BOOK_PREFIX = "tenant/"
"""Ledger books of tenants; `/` never occurs in an expert (Kubernetes object) name."""
ANONYMOUS = "anonymous"
"""The tenant label of callers without a key (metrics, audit)."""


@dataclass(frozen=True)
class TenantRuntime:
    """One tenant, compiled."""

    name: str
    config: config_mod.TenantConfig
    book: str
    budget: ledger.Budget | None
    limits: ledger.ThrottleLimits | None
    policies: frozenset[str] | None


def build_tenants(config: config_mod.GatewayConfig) -> dict[str, TenantRuntime]:
    """The gateway's tenants, compiled once per config."""
    out = {}
    for name, tenant in config.tenants.items():
        budget = None
        if tenant.budget is not None:
            budget = ledger.Budget(
                limit_nanos=ledger.usd_to_nanos(Decimal(str(tenant.budget.limit_usd))),
                window=tenant.budget.window,
            )
        rl = tenant.rate_limits
        limits = None
        if rl.requests_per_minute or rl.tokens_per_minute or rl.max_concurrency:
            limits = ledger.ThrottleLimits(
                requests_per_minute=rl.requests_per_minute,
                tokens_per_minute=rl.tokens_per_minute,
                max_concurrency=rl.max_concurrency,
            )
        out[name] = TenantRuntime(
            name=name,
            config=tenant,
            book=BOOK_PREFIX + name,
            budget=budget,
            limits=limits,
            policies=None if tenant.policies is None else frozenset(tenant.policies),
        )
    return out


def keys_required(config: config_mod.GatewayConfig) -> bool:
    """Whether callers without a valid key are refused (except on anonymous policies)."""
    return config.require_api_key or config.auth is not None or bool(config.tenants)


@dataclass(frozen=True)
class Caller:
    """The identity of one request."""

    tenant: TenantRuntime | None
    authenticated: bool

    @property
    def label(self) -> str:
        """Tenant name for headers, audit and metrics: declared names only."""
        if self.tenant is not None:
            return self.tenant.name
        return "authenticated" if self.authenticated else ANONYMOUS


ANONYMOUS_CALLER = Caller(tenant=None, authenticated=False)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key of `Authorization: Bearer <key>` or `api-key: <key>` (Azure style)."""
    header = headers.get("authorization", "")
    key = header[7:] if header[:7].lower() == "bearer " else headers.get("api-key", "")
    return key.strip() or None


def _unauthorized(message: str) -> errors.ApiError:
    return errors.ApiError(
        status=401, message=message, type="authentication_error", code="invalid_api_key"
    )


def identify(
    *,
    ring: keys_mod.KeyRing,
    tenants: dict[str, TenantRuntime],
    required: bool,
    key: str | None,
) -> Caller:
    """The caller of a request; 401 for a key that matches no tenant."""
    if key is None:
        return ANONYMOUS_CALLER
    if not required:
        return ANONYMOUS_CALLER  # No keys are configured: a sent key means nothing here.
    owner = ring.lookup(key)
    if owner is None:
        raise _unauthorized(
            "Invalid API key: it matches no tenant of this gateway (revoked or mistyped). "
            "Send `Authorization: Bearer <key>` with a key from your tenant's Secret."
        )
    return Caller(tenant=tenants.get(owner), authenticated=True)


def require_key(*, caller: Caller, required: bool, allow_anonymous: bool) -> None:
    """401 for a caller without a key where one is required."""
    if not caller.authenticated and required and not allow_anonymous:
        raise _unauthorized(
            "Missing API key: send `Authorization: Bearer <key>` with a key from your "
            "tenant's Secret."
        )


def authorize(*, caller: Caller, policy: str) -> None:
    """403 for a policy not given to the caller's tenant."""
    tenant = caller.tenant
    if tenant is not None and tenant.policies is not None and policy not in tenant.policies:
        raise errors.ApiError(
            status=403,
            message=f"Tenant `{tenant.name}` may not call model `{policy}`: ask the owner of "
            "the gateway to add it to the Tenant's `spec.policies`.",
            type="permission_error",
            code="policy_not_allowed",
        )


def admit(*, caller: Caller, policy: str, required: bool, allow_anonymous: bool) -> None:
    """401 for a missing key where one is required, 403 for a policy not given to the tenant."""
    require_key(caller=caller, required=required, allow_anonymous=allow_anonymous)
    authorize(caller=caller, policy=policy)
