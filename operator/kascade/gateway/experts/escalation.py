"""Escalation to cloud experts: choose, reserve worst case, throttle, call with
timeouts and bounded retries, settle the actual cost (or release on failure).

Money invariant: a call goes out only while a reservation of its worst-case cost is
held in the ledger, so recorded spend can never exceed a budget. If the ledger is
unreachable nothing is escalated (fail closed).
"""

from __future__ import annotations

import asyncio
import decimal
import email.utils
import functools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp

from kascade.gateway import config as config_mod
from kascade.gateway import ledger
from kascade.gateway.experts import breaker as breaker_mod
from kascade.gateway.experts import providers
from kascade.gateway.observe import metrics as metrics_mod

log = logging.getLogger("kascade.gateway")


@dataclass(frozen=True)
class StreamStart:
    """Told to a stream writer before it sends the first byte."""

    expert: str
    worst_case_nanos: int


# A stream writer copies an upstream SSE response to the client and returns the
# (prompt_tokens, completion_tokens) the stream reported, None where absent.
StreamWriter = Callable[
    [aiohttp.ClientResponse, providers.StreamTranslator, StreamStart],
    Awaitable[tuple[int | None, int | None]],
]


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


@dataclass
class ExpertState:
    """What survives config reloads for one expert: its breaker and derived limits."""

    name: str
    config: config_mod.ExpertConfig
    breaker: breaker_mod.CircuitBreaker
    budget: ledger.Budget
    limits: ledger.ThrottleLimits

    @classmethod
    def build(cls, *, name: str, config: config_mod.ExpertConfig) -> ExpertState:
        return cls(
            name=name,
            config=config,
            breaker=breaker_mod.CircuitBreaker(config=config.circuit_breaker),
            budget=_budget(config),
            limits=_limits(config),
        )

    def reconfigure(self, *, config: config_mod.ExpertConfig) -> None:
        self.config = config
        self.breaker.reconfigure(config=config.circuit_breaker)
        self.budget = _budget(config)
        self.limits = _limits(config)


def _budget(config: config_mod.ExpertConfig) -> ledger.Budget:
    return ledger.Budget(
        limit_nanos=ledger.usd_to_nanos(Decimal(str(config.budget.limit_usd))),
        window=config.budget.window,
    )


def _limits(config: config_mod.ExpertConfig) -> ledger.ThrottleLimits:
    r = config.rate_limits
    return ledger.ThrottleLimits(
        requests_per_minute=r.requests_per_minute,
        tokens_per_minute=r.tokens_per_minute,
        max_concurrency=r.max_concurrency,
    )


@dataclass
class Outcome:
    """What escalation did: the answer (if any) and every expert it tried and why."""

    answer: providers.Answer | None = None
    expert: str | None = None
    cost_nanos: int = 0
    streamed: bool = False
    attempts: list[dict[str, Any]] = field(default_factory=list)
    ledger_unavailable: bool = False
    budget_rejected: bool = False

    @property
    def failure_summary(self) -> str:
        """Human-readable reasons, e.g. `gpt: budget_exhausted; claude: http_500`."""
        return "; ".join(f"{a['expert']}: {a['outcome']}" for a in self.attempts) or "no experts"


class StreamBroken(Exception):
    """A streamed answer broke after bytes reached the client: the call happened."""


class UpstreamFailure(Exception):
    """One failed expert attempt."""

    def __init__(self, *, kind: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after

    @property
    def unhealthy(self) -> bool:
        """Counts against the circuit breaker (429 means busy, not broken)."""
        return self.kind != "http_429" and not self.kind.startswith("http_4")


def retry_after_seconds(value: str | None) -> float | None:
    """Parses a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class Call:
    """One request to escalate, already privacy-filtered."""

    request_id: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    requested_max_tokens: int | None
    prompt_bound: int
    """Upper bound on prompt tokens (UTF-8 bytes + overhead): used for worst-case cost."""
    prompt_estimate: int
    """Typical prompt tokens (chars / 4): used for context limits and TPM."""
    raw_personal_data: bool
    max_cost_nanos: int | None


class Escalator:
    """Holds the shared upstream session, ledger and throttle backends."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        ledger_backend: ledger.Ledger,
        throttle: ledger.Throttle,
        credentials: providers.Credentials,
        metrics: metrics_mod.Metrics,
    ) -> None:
        self.session = session
        self.ledger = ledger_backend
        self.throttle = throttle
        self.credentials = credentials
        self.metrics = metrics
        self._remote = not isinstance(ledger_backend, ledger.MemoryLedger)

    def order(self, *, experts: list[ExpertState], selection: str, call: Call) -> list[ExpertState]:
        """Experts in policy order, or cheapest worst case first."""
        if selection != "cheapest":
            return experts
        return sorted(experts, key=lambda e: self.worst_case(expert=e, call=call))

    def max_tokens(self, *, expert: ExpertState, call: Call) -> int:
        return call.requested_max_tokens or expert.config.default_max_tokens

    def worst_case(self, *, expert: ExpertState, call: Call) -> int:
        """Worst-case cost: prompt bound * input price + max_tokens * output price."""
        return cost_nanos(
            pricing=expert.config.pricing,
            prompt_tokens=call.prompt_bound,
            completion_tokens=self.max_tokens(expert=expert, call=call),
        )

    async def run(
        self,
        *,
        experts: list[ExpertState],
        call: Call,
        stream_writer: StreamWriter | None = None,
    ) -> Outcome:
        """Tries experts in order until one answers; see the module docstring."""
        outcome = Outcome()
        for expert in experts:
            result = await self._one(
                expert=expert, call=call, outcome=outcome, writer=stream_writer
            )
            outcome.attempts.append({"expert": expert.name, "outcome": result})
            if result == "ok" or outcome.ledger_unavailable:
                break
            if result == "budget_exhausted" and expert.config.budget.on_exhausted == "reject":
                outcome.budget_rejected = True
        return outcome

    async def _one(
        self,
        *,
        expert: ExpertState,
        call: Call,
        outcome: Outcome,
        writer: StreamWriter | None,
    ) -> str:
        cfg = expert.config
        if not expert.breaker.available():
            return "circuit_open"
        if call.raw_personal_data and not cfg.allow_personal_data:
            return "personal_data_not_allowed"
        if cfg.max_context_tokens is not None and call.prompt_estimate > cfg.max_context_tokens:
            return "context_too_long"
        worst = self.worst_case(expert=expert, call=call)
        if call.max_cost_nanos is not None and worst > call.max_cost_nanos:
            return "over_request_cost_cap"
        try:
            self.credentials.get(cfg.credentials)
        except (providers.CredentialError, OSError) as exc:
            log.warning("Skipped expert=%s: credentials unavailable (%s)", expert.name, exc)
            return "credentials_unavailable"
        try:
            reservation = await self.ledger.reserve(
                expert=expert.name,
                budget=expert.budget,
                amount_nanos=worst,
                request_id=call.request_id,
            )
        except ledger.BudgetExhausted:
            return "budget_exhausted"
        except ledger.LedgerUnavailable:
            outcome.ledger_unavailable = True
            return "ledger_unavailable"
        settled = False
        try:
            result = await self._attempts(
                expert=expert,
                call=call,
                outcome=outcome,
                writer=writer,
                worst=worst,
                reservation=reservation,
            )
            settled = result in ("ok", "stream_broken")  # both settled already
            return result
        finally:
            if not settled:
                await self._release(reservation)

    async def _release(self, reservation: ledger.Reservation) -> None:
        try:
            await self.ledger.release(reservation)
        except ledger.LedgerError as exc:
            # The reservation expires on its own (converted to spend: conservative).
            log.warning("Failed to release reservation=%s: %s", reservation.id, exc)

    async def _attempts(
        self,
        *,
        expert: ExpertState,
        call: Call,
        outcome: Outcome,
        writer: StreamWriter | None,
        worst: int,
        reservation: ledger.Reservation,
    ) -> str:
        cfg = expert.config
        max_tokens = self.max_tokens(expert=expert, call=call)
        request = providers.build_request(
            expert=cfg,
            api_key=self.credentials.get(cfg.credentials),
            messages=call.messages,
            params=call.params,
            max_tokens=max_tokens,
            stream=writer is not None,
        )
        last = "failed"
        for attempt in range(cfg.retries.max_attempts):
            if not expert.breaker.allow():
                return "circuit_open"
            try:
                permit = await self.throttle.acquire(
                    expert=expert.name,
                    limits=expert.limits,
                    tokens=call.prompt_estimate + max_tokens,
                )
            except ledger.Throttled as exc:
                expert.breaker.release_trial()
                return f"throttled_{exc.limit}"
            except ledger.LedgerUnavailable:
                expert.breaker.release_trial()
                outcome.ledger_unavailable = True
                return "ledger_unavailable"
            try:
                usage = await self._send(expert=expert, request=request, writer=writer, worst=worst)
            except StreamBroken:
                # The expert was called and may bill it: charge the worst case, no retry.
                await self._finish(permit, reservation, actual=worst)
                outcome.cost_nanos = worst
                outcome.streamed = True
                return "stream_broken"
            except UpstreamFailure as failure:
                await self._release_permit(permit)
                last = failure.kind
                self.metrics.expert_errors.labels(expert.name, failure.kind).inc()
                if failure.unhealthy:
                    expert.breaker.record_failure()
                else:
                    expert.breaker.release_trial()
                delay = await self._retry_delay(expert=expert, failure=failure, attempt=attempt)
                if delay is None or attempt + 1 >= cfg.retries.max_attempts:
                    return last
                await asyncio.sleep(delay)
                continue
            except BaseException:  # cancelled (client gone) or a bug: free the slot
                await self._release_permit(permit)
                raise
            expert.breaker.record_success()
            answer, pt, ct = usage
            if pt is None or ct is None:
                actual = worst  # No usage reported: charge the worst case (conservative).
            else:
                actual = cost_nanos(pricing=cfg.pricing, prompt_tokens=pt, completion_tokens=ct)
                if actual > worst:
                    log.warning(
                        "Expert=%s reported usage above the reserved worst case "
                        "(actual=%d worst=%d nanos)",
                        expert.name,
                        actual,
                        worst,
                    )
            await self._finish(permit, reservation, actual=actual)
            outcome.answer = answer
            outcome.expert = expert.name
            outcome.cost_nanos = actual
            outcome.streamed = writer is not None
            self.metrics.observe_cost(expert=expert.name, usd=actual / 1_000_000_000)
            return "ok"
        return last

    async def _finish(
        self, permit: ledger.Permit, reservation: ledger.Reservation, *, actual: int
    ) -> None:
        """Ends the concurrency slot and settles; with Redis both round trips overlap
        (in memory they are synchronous, and a task per call would only add cost)."""
        if self._remote:
            await asyncio.gather(
                self._release_permit(permit), self._settle(reservation, actual=actual)
            )
        else:
            await self._release_permit(permit)
            await self._settle(reservation, actual=actual)

    async def _settle(self, reservation: ledger.Reservation, *, actual: int) -> None:
        try:
            await self.ledger.settle(reservation, actual_nanos=actual)
        except ledger.LedgerError as exc:
            # Unsettled reservations expire into spend at worst case: never under-counted.
            log.warning("Failed to settle reservation=%s: %s", reservation.id, exc)

    async def _release_permit(self, permit: ledger.Permit) -> None:
        try:
            await self.throttle.release(permit)
        except ledger.LedgerError as exc:
            log.warning("Failed to release throttle permit=%s: %s", permit.id, exc)

    async def _retry_delay(
        self, *, expert: ExpertState, failure: UpstreamFailure, attempt: int
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to move to the next expert."""
        retries = expert.config.retries
        if failure.kind == "http_429" and failure.retry_after:
            try:
                await self.throttle.block_until(
                    expert=expert.name, until=time.time() + failure.retry_after
                )
            except ledger.LedgerError as exc:
                log.warning("Failed to record upstream Retry-After for %s: %s", expert.name, exc)
        if not failure.retryable:
            return None
        backoff = min(retries.initial_backoff_millis * (2**attempt), retries.max_backoff_millis)
        delay = random.uniform(backoff / 2000, backoff / 1000)  # "equal jitter"
        if failure.retry_after is not None:
            if failure.retry_after * 1000 > retries.max_backoff_millis:
                return None  # Waiting that long is worse than the next expert.
            delay = max(delay, failure.retry_after)
        return delay

    async def _send(
        self,
        *,
        expert: ExpertState,
        request: providers.UpstreamRequest,
        writer: StreamWriter | None,
        worst: int,
    ) -> tuple[providers.Answer | None, int | None, int | None]:
        cfg = expert.config
        timeout = aiohttp.ClientTimeout(
            total=cfg.timeouts.request_seconds, sock_connect=cfg.timeouts.connect_seconds
        )
        try:
            async with self.session.post(
                request.url, data=request.body, headers=request.headers, timeout=timeout
            ) as resp:
                if resp.status != 200:
                    await resp.read()
                    raise _status_failure(resp)
                if writer is not None:
                    translator = providers.StreamTranslator(provider=cfg.provider)
                    try:
                        start = StreamStart(expert=expert.name, worst_case_nanos=worst)
                        pt, ct = await writer(resp, translator, start)
                    except (OSError, aiohttp.ClientError, TimeoutError) as exc:
                        raise StreamBroken(str(exc)) from exc
                    return None, pt, ct
                raw = await resp.read()
                data = json.loads(raw)
        except TimeoutError:
            raise UpstreamFailure(kind="timeout", retryable=True) from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailure(kind="connection_error", retryable=True) from exc
        except ValueError:
            raise UpstreamFailure(kind="bad_response", retryable=False) from None
        try:
            answer = providers.parse_answer(provider=cfg.provider, data=data, raw=raw)
        except providers.BadUpstreamBody:
            raise UpstreamFailure(kind="bad_response", retryable=False) from None
        return answer, answer.prompt_tokens, answer.completion_tokens


def _status_failure(resp: aiohttp.ClientResponse) -> UpstreamFailure:
    status = resp.status
    retry_after = retry_after_seconds(resp.headers.get("retry-after"))
    retryable = status == 429 or status >= 500
    return UpstreamFailure(kind=f"http_{status}", retryable=retryable, retry_after=retry_after)
