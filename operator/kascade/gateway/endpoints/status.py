"""GET /v1/kascade/status: spend, reservations, throttle and circuit state per expert.
Read-only; endpoints and models are shown, credentials never are."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kascade.gateway import ledger

if TYPE_CHECKING:
    from kascade.gateway import runtime
    from kascade.gateway.route import pipeline


def _usd(nanos: int) -> str:
    return format(ledger.nanos_to_usd(nanos).normalize(), "f")


async def collect(state: pipeline.State) -> dict[str, Any]:
    """A JSON-ready status document."""
    rt = state.runtime
    experts: dict[str, Any] = {}
    for name in rt.config.experts:
        expert = state.experts[name]
        entry: dict[str, Any] = {
            "provider": expert.config.provider,
            "model": expert.config.model,
            "circuit": {
                "state": expert.breaker.state,
                "consecutiveFailures": expert.breaker.consecutive_failures,
            },
        }
        try:
            snap = await state.escalator.ledger.snapshot(expert=name, budget=expert.budget)
            entry["budget"] = {
                "window": snap.window,
                "windowStart": snap.window_start,
                "limitUSD": _usd(snap.limit_nanos),
                "spentUSD": _usd(snap.spent_nanos),
                "reservedUSD": _usd(snap.reserved_nanos),
                "remainingUSD": _usd(snap.remaining_nanos),
            }
            throttle = await state.escalator.throttle.state(expert=name)
            entry["throttle"] = {
                "requestsLastMinute": throttle.requests_last_minute,
                "tokensLastMinute": throttle.tokens_last_minute,
                "inFlight": throttle.in_flight,
                "blockedUntil": throttle.blocked_until,
            }
        except ledger.LedgerError as exc:
            entry["ledgerError"] = type(exc).__name__
        experts[name] = entry
    return {
        "namespace": rt.config.namespace,
        "tenants": await _tenants(state),
        "ledger": "redis" if (rt.config.ledger.url or "").startswith("redis") else "memory",
        "policies": {
            n: {
                "generation": p.config.generation,
                "stats": state.metrics.policy_stats.document(n),
            }
            for n, p in rt.policies.items()
        },
        "experts": experts,
        # Policies with a quality target: labels and learned thresholds per task (and
        # per variant); only arms the config serves now.
        "quality": state.quality.status(serving=_arms(rt)),
    }


def _arms(rt: runtime.Runtime) -> set[tuple[str, str | None]]:
    """(policy, variant) of every arm that serves requests (variant None: no variants)."""
    arms: set[tuple[str, str | None]] = set()
    for name, policy in rt.policies.items():
        arms.update((name, v.name) for v in policy.variants)
        if not policy.variants:
            arms.add((name, None))
    return arms


async def _tenants(state: pipeline.State) -> dict[str, Any]:
    """Spend and key count per tenant (never the keys)."""
    rt = state.runtime
    counts = rt.keyring.counts()
    out: dict[str, Any] = {}
    for name, tenant in rt.tenants.items():
        entry: dict[str, Any] = {"keys": counts.get(name, 0)}
        if tenant.budget is not None:
            try:
                snap = await state.escalator.ledger.snapshot(
                    expert=tenant.book, budget=tenant.budget
                )
                entry["budget"] = {
                    "window": snap.window,
                    "limitUSD": _usd(snap.limit_nanos),
                    "spentUSD": _usd(snap.spent_nanos),
                    "reservedUSD": _usd(snap.reserved_nanos),
                    "remainingUSD": _usd(snap.remaining_nanos),
                }
            except ledger.LedgerError as exc:
                entry["ledgerError"] = type(exc).__name__
        out[name] = entry
    return out
