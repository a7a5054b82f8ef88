"""Escalation to cloud experts: choose, then per attempt reserve the worst case,
throttle, call with timeouts, and settle (docs/ledger.md, "The billing rule").

Money invariant: a call goes out only while a reservation of its worst-case cost is
held in the ledger, so recorded spend can never exceed a budget. Every attempt has
its own reservation. An attempt whose bytes may have reached the provider is charged
(its reported usage, else its worst case) in a settlement that cancellation cannot
skip; only an attempt that provably never reached it (connection refused, or a status
the provider documents as unbilled, answered before generation) is released. If the
ledger is unreachable nothing is escalated (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NoReturn

import aiohttp

from kascade.gateway import config as config_mod
from kascade.gateway import ledger
from kascade.gateway.experts import breaker as breaker_mod
from kascade.gateway.experts import providers
from kascade.gateway.experts import worst_case as worst_case_mod
from kascade.gateway.observe import metrics as metrics_mod

log = logging.getLogger("kascade.gateway")


# Statuses the providers document as refused before generation and not billed
# (OpenAI and Anthropic bill no failed request of these kinds). A 5xx may come after
# generation started, so it is charged.
UNBILLED_STATUSES = frozenset({400, 401, 403, 404, 413, 422, 429})


class UpstreamCut(Exception):
    """The upstream stream failed after it started (idle gap, dropped connection)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class StreamStart:
    """Told to a stream writer before it sends the first byte."""

    expert: str
    worst_case_nanos: int
    lines: AsyncIterator[bytes]
    """The upstream's SSE lines, the first one already read; raises UpstreamCut when
    the upstream stalls longer than the idle timeout or drops the connection."""


# A stream writer copies an upstream SSE response to the client and returns the
# (prompt_tokens, completion_tokens) the stream reported, None where absent. When
# ``lines`` raises UpstreamCut it ends the client's stream with an error event and
# [DONE] and re-raises it.
StreamWriter = Callable[
    [aiohttp.ClientResponse, providers.StreamTranslator, StreamStart],
    Awaitable[tuple[int | None, int | None]],
]

cost_nanos = worst_case_mod.cost_nanos


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
        time_zone=config.budget.time_zone,
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
    tenant_budget_exhausted: bool = False
    """The caller's tenant budget could not hold an attempt's worst case."""
    budget_rejected: bool = False
    refusals: list[ledger.BudgetExhausted] = field(default_factory=list)
    """Budget refusals, with the ledger's figures at the moment of refusal."""
    format_problems: list[str] = field(default_factory=list)
    """Answers taken back for their format: ``expert: problem`` (never answer text)."""

    @property
    def failure_summary(self) -> str:
        """Human-readable reasons, e.g. `gpt: budget_exhausted; claude: http_500`."""
        parts = [f"{a['expert']}: {a['outcome']}" for a in self.attempts]
        parts += [
            f"{r.expert}: spent {r.spent_nanos} + reserved {r.reserved_nanos} + requested "
            f"{r.requested_nanos} > limit {r.limit_nanos} nano-USD"
            for r in self.refusals
        ]
        parts += self.format_problems
        return "; ".join(parts) or "no experts"


class StreamBroken(Exception):
    """A streamed answer broke after bytes reached the client: the call happened."""

    def __init__(self, kind: str, *, upstream: bool) -> None:
        super().__init__(kind)
        self.kind = kind
        self.upstream = upstream
        """True when the expert's side failed (counts against its breaker)."""


class UpstreamFailure(Exception):
    """One failed expert attempt."""

    def __init__(
        self,
        *,
        kind: str,
        condition: str | None,
        retry_after: float | None = None,
        unsent: bool = False,
    ) -> None:
        super().__init__(kind)
        self.kind = kind
        self.condition = condition
        """The retries.retryOn condition this failure falls under (None: never retried)."""
        self.retry_after = retry_after
        self.unsent = unsent
        """True only when the provider provably never billed it (released, not charged)."""

    @property
    def unhealthy(self) -> bool:
        """Counts against the circuit breaker (429 means busy, not broken)."""
        return self.kind != "http_429" and not self.kind.startswith("http_4")


def retry_after_seconds(value: str | None) -> float | None:
    """Parses a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer
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
    """Upper bound on prompt text tokens (for rules; the reservation uses worst_case)."""
    prompt_estimate: int
    """Typical prompt tokens (chars / 4): used for context limits and TPM."""
    raw_personal_data: bool
    max_cost_nanos: int | None
    needs: frozenset[str] = frozenset()
    """Capabilities the request needs (see experts.capabilities)."""
    also_books: tuple[ledger.Book, ...] = ()
    """Other budgets (the caller's tenant) reserved atomically with each expert's."""
    answer_problem: Callable[[dict[str, Any]], str | None] | None = None
    """Why a whole (not streamed) answer cannot be returned, None when it can: the
    request's response_format. An expert's answer with a problem is paid for (the call
    happened) and the next expert is tried (outcome ``invalid_format``)."""


@dataclass
class _Attempt:
    """One attempt's open books: what it reserved and what it will be charged."""

    reservation: ledger.Reservation
    permit: ledger.Permit
    worst: int
    charge: int | None
    """Nano-USD to settle; None releases (provably unsent). Starts at the worst case."""
    kind: str = "worst_case"


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
        self._settling: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Waits for settlements still running (their callers were cancelled)."""
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    def order(self, *, experts: list[ExpertState], selection: str, call: Call) -> list[ExpertState]:
        """Experts in policy order, or cheapest worst case first."""
        if selection != "cheapest":
            return experts
        return sorted(experts, key=lambda e: self.worst_case(expert=e, call=call))

    def max_tokens(self, *, expert: ExpertState, call: Call) -> int:
        return call.requested_max_tokens or expert.config.default_max_tokens

    def build(self, *, expert: ExpertState, call: Call, stream: bool) -> providers.UpstreamRequest:
        """The outbound request for ``expert`` (raises CredentialError / OSError)."""
        cfg = expert.config
        return providers.build_request(
            expert=cfg,
            api_key=self.credentials.get(cfg.credentials),
            messages=call.messages,
            params=call.params,
            max_tokens=self.max_tokens(expert=expert, call=call),
            stream=stream,
        )

    def worst_case(self, *, expert: ExpertState, call: Call) -> int:
        """Worst-case cost of one attempt, over the body the adapter would send."""
        request = providers.build_request(
            expert=expert.config,
            api_key=None,
            messages=call.messages,
            params=call.params,
            max_tokens=self.max_tokens(expert=expert, call=call),
            stream=False,
        )
        try:
            return worst_case_mod.bound(body=request.body, pricing=expert.config.pricing).nanos
        except ValueError:
            return ledger_max_nanos()

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
            if result in ("ok", "stream_broken") or outcome.ledger_unavailable:
                break
            if result == "budget_exhausted" and expert.config.budget.on_exhausted == "reject":
                outcome.budget_rejected = True
        return outcome

    def _skip(self, *, expert: ExpertState, call: Call) -> str | None:
        """Why ``expert`` cannot take ``call`` at all (before anything is reserved)."""
        cfg = expert.config
        if not expert.breaker.available():
            return "circuit_open"
        if call.raw_personal_data and not cfg.allow_personal_data:
            return "personal_data_not_allowed"
        if self._too_long(expert=expert, call=call):
            return "context_too_long"
        if cfg.capabilities is not None:
            missing = sorted(call.needs.difference(cfg.capabilities))
            if missing:
                return f"lacks_{missing[0].replace('-', '_')}"
        return None

    def _too_long(self, *, expert: ExpertState, call: Call) -> bool:
        """The prompt plus the max_tokens it would be sent exceeds the expert's context.

        The typical estimate, not the byte bound: the bound counts one token per byte
        (several times the real count) and would keep requests that fit away from the
        expert; the estimate is also what the expert's tokensPerMinute counts."""
        limit = expert.config.max_context_tokens
        if limit is None:
            return False
        return call.prompt_estimate + self.max_tokens(expert=expert, call=call) > limit

    async def _one(
        self,
        *,
        expert: ExpertState,
        call: Call,
        outcome: Outcome,
        writer: StreamWriter | None,
    ) -> str:
        cfg = expert.config
        skipped = self._skip(expert=expert, call=call)
        if skipped is not None:
            return skipped
        try:
            request = self.build(expert=expert, call=call, stream=writer is not None)
        except (providers.CredentialError, OSError) as exc:
            log.warning("Skipped expert=%s: credentials unavailable (%s)", expert.name, exc)
            return "credentials_unavailable"
        try:
            bound = worst_case_mod.bound(body=request.body, pricing=cfg.pricing)
        except ValueError:  # no output limit, or not JSON: its cost has no bound
            return "unbounded_cost"
        if call.max_cost_nanos is not None and bound.nanos > call.max_cost_nanos:
            return "over_request_cost_cap"
        result = "failed"
        for attempt in range(cfg.retries.max_attempts):
            failure = await self._attempt(
                expert=expert,
                call=call,
                outcome=outcome,
                writer=writer,
                request=request,
                worst=bound.nanos,
            )
            if isinstance(failure, str):
                return failure
            result = failure.kind
            delay = await self._retry_delay(expert=expert, failure=failure, attempt=attempt)
            if delay is None or attempt + 1 >= cfg.retries.max_attempts:
                return result
            await asyncio.sleep(delay)
        return result

    async def _attempt(
        self,
        *,
        expert: ExpertState,
        call: Call,
        outcome: Outcome,
        writer: StreamWriter | None,
        request: providers.UpstreamRequest,
        worst: int,
    ) -> str | UpstreamFailure:
        """One attempt with its own reservation; a str ends this expert's attempts."""
        slot = expert.breaker.acquire()
        if slot is None:
            return "circuit_open"
        try:
            opened = await self._open(expert=expert, call=call, outcome=outcome, worst=worst)
            if isinstance(opened, str):
                return opened
            result = await self._call(
                expert=expert,
                outcome=outcome,
                writer=writer,
                request=request,
                books=opened,
                slot=slot,
            )
        finally:
            slot.release()  # gives a half-open trial back unless the call reported
        if result == "ok" and writer is None and self._refused_format(expert, call, outcome):
            return "invalid_format"
        return result

    def _refused_format(self, expert: ExpertState, call: Call, outcome: Outcome) -> bool:
        """Takes back an answer that is not what the request's response_format asked
        for (it stays paid: the ledger settled the call); True when it did. Another
        attempt at the same expert would likely fail the same way: the next one is
        asked instead. Streamed answers are not checked (their bytes are sent)."""
        answer = outcome.answer
        if call.answer_problem is None or answer is None:
            return False
        problem = call.answer_problem(answer.completion)
        if problem is None:
            return False
        log.info("Expert answer refused expert=%s: %s", expert.name, problem)
        self.metrics.expert_errors.labels(expert.name, "invalid_format").inc()
        outcome.answer, outcome.expert = None, None
        outcome.format_problems.append(f"{expert.name}: {problem}")
        return True

    async def _open(
        self, *, expert: ExpertState, call: Call, outcome: Outcome, worst: int
    ) -> _Attempt | str:
        """Reserves the worst case, then takes a throttle permit."""
        try:
            reservation = await self.ledger.reserve(
                expert=expert.name,
                budget=expert.budget,
                amount_nanos=worst,
                request_id=call.request_id,
                also=call.also_books,
            )
        except ledger.BudgetExhausted as exc:
            if exc.expert != expert.name:  # the tenant's book refused, not the expert's
                outcome.tenant_budget_exhausted = True
                return "tenant_budget_exhausted"
            outcome.refusals.append(exc)
            return "budget_exhausted"
        except ledger.LedgerUnavailable:
            outcome.ledger_unavailable = True
            return "ledger_unavailable"
        except ValueError:  # above the ledger's maximum amount: no budget can hold it
            return "over_ledger_maximum"
        tokens = call.prompt_estimate + self.max_tokens(expert=expert, call=call)
        try:
            permit = await self.throttle.acquire(
                expert=expert.name, limits=expert.limits, tokens=tokens
            )
        except BaseException as exc:
            await self._shielded(self._release(reservation))
            if isinstance(exc, ledger.Throttled):
                return f"throttled_{exc.limit}"
            if isinstance(exc, ledger.LedgerUnavailable):
                outcome.ledger_unavailable = True
                return "ledger_unavailable"
            raise
        return _Attempt(reservation=reservation, permit=permit, worst=worst, charge=worst)

    async def _call(
        self,
        *,
        expert: ExpertState,
        outcome: Outcome,
        writer: StreamWriter | None,
        request: providers.UpstreamRequest,
        books: _Attempt,
        slot: breaker_mod.Slot,
    ) -> str | UpstreamFailure:
        """Sends, then settles in a task cancellation cannot interrupt (see module doc)."""
        cfg = expert.config
        translator = providers.StreamTranslator(provider=cfg.provider)
        try:
            answer, pt, ct = await self._send(
                expert=expert,
                request=request,
                writer=writer,
                worst=books.worst,
                translator=translator,
            )
            self._charge(expert=expert, books=books, pt=pt, ct=ct)
        except UpstreamFailure as failure:
            if failure.unsent:
                books.charge, books.kind = None, "released"
            self.metrics.expert_errors.labels(expert.name, failure.kind).inc()
            if failure.unhealthy:
                slot.failure()
            return failure
        except StreamBroken as broken:
            # Bytes reached the client: no retry. Charged the usage if it arrived.
            self._charge(
                expert=expert,
                books=books,
                pt=translator.prompt_tokens,
                ct=translator.completion_tokens,
            )
            if broken.upstream:
                slot.failure()
                self.metrics.expert_errors.labels(expert.name, broken.kind).inc()
            outcome.cost_nanos = books.charge or 0
            outcome.streamed = True
            return "stream_broken"
        finally:
            await self._shielded(self._finish(expert=expert, books=books))
        slot.success()
        outcome.answer = answer
        outcome.expert = expert.name
        outcome.cost_nanos = books.charge or 0
        outcome.streamed = writer is not None
        self.metrics.observe_cost(expert=expert.name, usd=outcome.cost_nanos / 1_000_000_000)
        return "ok"

    def _charge(
        self, *, expert: ExpertState, books: _Attempt, pt: int | None, ct: int | None
    ) -> None:
        """Sets the charge from reported usage; without usage it stays the worst case."""
        if pt is None or ct is None:
            return
        actual = cost_nanos(pricing=expert.config.pricing, prompt_tokens=pt, completion_tokens=ct)
        if actual > books.worst:
            # No request can cost more than its bound, so the report is impossible (or
            # the bound has a bug, which the tests catch through this counter): the
            # charge stays the reserved worst case, so spend never passes the limit.
            self.metrics.usage_above_reservation.labels(expert.name).inc()
            log.error(
                "Expert=%s reported usage above the reserved worst case; charged the "
                "worst case (reported=%d worst=%d nanos)",
                expert.name,
                actual,
                books.worst,
            )
            return
        books.charge, books.kind = actual, "usage"

    async def _shielded(self, coro: Coroutine[Any, Any, None]) -> None:
        """Runs ``coro`` to completion even if the caller is cancelled meanwhile.

        The in-memory ledger never suspends, so it finishes within this call; a remote
        one runs as a task the caller's cancellation cannot reach (``close()`` waits).
        """
        if not self._remote:
            await coro
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def _finish(self, *, expert: ExpertState, books: _Attempt) -> None:
        """Ends the concurrency slot and settles (or releases); with Redis both round
        trips overlap."""
        self.metrics.settlements.labels(expert.name, books.kind).inc()
        if books.charge is None:
            settle = self._release(books.reservation)
        else:
            settle = self._settle(books.reservation, actual=books.charge)
        if self._remote:
            await asyncio.gather(self._release_permit(books.permit), settle)
        else:
            await self._release_permit(books.permit)
            await settle

    async def _settle(self, reservation: ledger.Reservation, *, actual: int) -> None:
        try:
            await self.ledger.settle(reservation, actual_nanos=min(actual, ledger_max_nanos()))
        except ledger.LedgerError as exc:
            # Unsettled reservations expire into spend at worst case: never under-counted.
            log.warning("Failed to settle reservation=%s: %s", reservation.id, exc)

    async def _release(self, reservation: ledger.Reservation) -> None:
        try:
            await self.ledger.release(reservation)
        except ledger.LedgerError as exc:
            # The reservation expires on its own (converted to spend: conservative).
            log.warning("Failed to release reservation=%s: %s", reservation.id, exc)

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
        retry_after = failure.retry_after
        if retry_after is not None and retry_after > retries.max_retry_after_seconds:
            self.metrics.retry_after_capped.labels(expert.name).inc()
            retry_after = retries.max_retry_after_seconds
        if failure.kind == "http_429" and retry_after:
            try:
                await self.throttle.block_until(expert=expert.name, until=time.time() + retry_after)
            except ledger.LedgerError as exc:
                log.warning("Failed to record upstream Retry-After for %s: %s", expert.name, exc)
        if failure.condition is None or failure.condition not in retries.retry_on:
            return None
        backoff = min(retries.initial_backoff_millis * (2**attempt), retries.max_backoff_millis)
        delay = random.uniform(backoff / 2000, backoff / 1000)  # "equal jitter"
        if retry_after is not None:
            if retry_after * 1000 > retries.max_backoff_millis:
                return None  # Waiting that long is worse than the next expert.
            delay = max(delay, retry_after)
        return delay

    async def _send(
        self,
        *,
        expert: ExpertState,
        request: providers.UpstreamRequest,
        writer: StreamWriter | None,
        worst: int,
        translator: providers.StreamTranslator,
    ) -> tuple[providers.Answer | None, int | None, int | None]:
        """One HTTP exchange. Raises UpstreamFailure (nothing reached the client) or
        StreamBroken (the client already has part of a stream)."""
        t = expert.config.timeouts
        stream = writer is not None
        timeout = aiohttp.ClientTimeout(
            total=None if stream else t.request_seconds,
            sock_connect=t.connect_seconds,
        )
        first_token = (t.first_token_seconds or t.request_seconds) if stream else None
        try:
            async with asyncio.timeout(first_token):
                resp = await self.session.post(
                    request.url, data=request.body, headers=request.headers, timeout=timeout
                )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            # The connection was never made, so no request byte left this process.
            raise UpstreamFailure(
                kind="connect_failed", condition="connection-error", unsent=True
            ) from None
        except TimeoutError:
            raise UpstreamFailure(kind="timeout", condition="timeout") from None
        except aiohttp.ClientError:
            raise UpstreamFailure(kind="connection_error", condition="connection-error") from None
        try:
            if resp.status != 200:
                await self._refused(resp)
            if writer is None:
                result = await self._read_answer(expert=expert, resp=resp)
            else:
                result = await self._stream(
                    expert=expert,
                    resp=resp,
                    writer=writer,
                    worst=worst,
                    translator=translator,
                    first_token=first_token,
                )
        except BaseException:
            resp.close()  # never hand a half-read connection back to the pool
            raise
        resp.release()
        return result

    async def _refused(self, resp: aiohttp.ClientResponse) -> NoReturn:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with asyncio.timeout(5):
                await resp.read()
        raise _status_failure(resp)

    async def _read_answer(
        self, *, expert: ExpertState, resp: aiohttp.ClientResponse
    ) -> tuple[providers.Answer | None, int | None, int | None]:
        try:
            raw = await resp.read()
            data = json.loads(raw)
            answer = providers.parse_answer(provider=expert.config.provider, data=data, raw=raw)
        except TimeoutError:
            raise UpstreamFailure(kind="timeout", condition="timeout") from None
        except aiohttp.ClientError:
            raise UpstreamFailure(kind="connection_error", condition="connection-error") from None
        except ValueError:  # not JSON, or not a chat completion
            raise UpstreamFailure(kind="bad_response", condition=None) from None
        return answer, answer.prompt_tokens, answer.completion_tokens

    async def _stream(
        self,
        *,
        expert: ExpertState,
        resp: aiohttp.ClientResponse,
        writer: StreamWriter,
        worst: int,
        translator: providers.StreamTranslator,
        first_token: float | None,
    ) -> tuple[providers.Answer | None, int | None, int | None]:
        t = expert.config.timeouts
        try:
            async with asyncio.timeout(first_token):
                first = await resp.content.readline()
        except TimeoutError:
            raise UpstreamFailure(kind="first_token_timeout", condition="timeout") from None
        except (aiohttp.ClientError, ValueError):
            raise UpstreamFailure(kind="connection_error", condition="connection-error") from None
        lines = _lines(resp, first=first, idle=t.idle_seconds or t.request_seconds)
        start = StreamStart(expert=expert.name, worst_case_nanos=worst, lines=lines)
        try:
            pt, ct = await writer(resp, translator, start)
        except UpstreamCut as cut:
            raise StreamBroken(cut.kind, upstream=True) from cut
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            raise StreamBroken("client_gone", upstream=False) from exc
        return None, pt, ct


async def _lines(
    resp: aiohttp.ClientResponse, *, first: bytes, idle: float
) -> AsyncIterator[bytes]:
    """The upstream's lines, each read within ``idle`` seconds."""
    line = first
    while line:
        yield line
        try:
            async with asyncio.timeout(idle):
                line = await resp.content.readline()
        except TimeoutError:
            raise UpstreamCut("idle_timeout") from None
        except (aiohttp.ClientError, ValueError):
            raise UpstreamCut("stream_dropped") from None


def ledger_max_nanos() -> int:
    """The largest amount the ledger holds (2**53 nano-USD)."""
    return ledger.MAX_NANOS


def _status_failure(resp: aiohttp.ClientResponse) -> UpstreamFailure:
    status = resp.status
    retry_after = retry_after_seconds(resp.headers.get("retry-after"))
    condition = "rate-limited" if status == 429 else "server-error" if status >= 500 else None
    return UpstreamFailure(
        kind=f"http_{status}",
        condition=condition,
        retry_after=retry_after,
        unsent=status in UNBILLED_STATUSES,
    )
