"""Adversarial faults of the simulated expert, scripted per request.

A fault is chosen for each request by, in this order:

- a marker in the last user message: ``[[sim-fault kind=status status=429
  retry_after=31536000]]`` (it survives the gateway, which forwards the prompt);
- ``fault_script``: ``;``-separated fault specs applied by arrival order (request n
  gets entry (n - 1) mod length; an empty entry means no fault).

A spec is ``kind=<kind>`` plus optional ``seconds=``, ``status=``, ``retry_after=``
(sent verbatim with ``_`` read as a space, so a year in seconds or an HTTP date
such as ``Wed,_21_Oct_2099_07:28:00_GMT`` can be tried) and ``after=`` (chunks sent
before a stream drops). Kinds:

=====================  =========================================================
``slow_headers``       wait ``seconds`` before the status line
``slow_chunks``        wait ``seconds`` before every stream chunk
``hang_after_headers`` send the headers, then nothing for ``seconds``, then drop
``drop_mid_stream``    send ``after`` chunks (non-streamed: half the body), drop
``status``             answer ``status`` (4xx: refused before generation, free;
                       5xx: failed after generating, billed) with Retry-After
``usage_missing``      answer without a usage block
``usage_too_large``    report usage far above what the request could produce
                       (billed honestly: the report lies, the bill does not)
=====================  =========================================================
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from dataclasses import dataclass

from aiohttp import web

KINDS = frozenset(
    {
        "slow_headers",
        "slow_chunks",
        "hang_after_headers",
        "drop_mid_stream",
        "status",
        "usage_missing",
        "usage_too_large",
    }
)
_MARK = re.compile(r"\[\[sim-fault ([^\]]*)\]\]")

# The fault of the request being answered (aiohttp runs each request in its own task).
CURRENT: contextvars.ContextVar[Fault | None] = contextvars.ContextVar("fault", default=None)


class FaultSpecError(ValueError):
    """A fault spec that cannot be parsed; the message names the bad part."""


@dataclass(frozen=True)
class Fault:
    kind: str
    seconds: float = 0.05
    status: int = 500
    retry_after: str | None = None
    after: int = 1
    streamed: bool = False
    """Whether the request asked for a stream (set by the server)."""

    @property
    def billed(self) -> bool:
        """Whether the provider would bill the request (everything but a 4xx refusal)."""
        return not (self.kind == "status" and self.status < 500)


def parse(spec: str) -> Fault | None:
    """``kind=status status=429 retry_after=5`` → Fault; empty → None."""
    fields: dict[str, str] = {}
    for part in spec.split():
        key, sep, value = part.partition("=")
        if not sep:
            raise FaultSpecError(f"fault spec part {part!r} is not key=value")
        fields[key] = value
    if not fields:
        return None
    kind = fields.pop("kind", "")
    if kind not in KINDS:
        raise FaultSpecError(f"fault kind {kind!r} is not one of {sorted(KINDS)}")
    try:
        fault = Fault(
            kind=kind,
            seconds=float(fields.pop("seconds", "0.05")),
            status=int(fields.pop("status", "500")),
            retry_after=_spaces(fields.pop("retry_after", None)),
            after=int(fields.pop("after", "1")),
        )
    except ValueError as exc:
        raise FaultSpecError(f"fault spec {spec!r}: {exc}") from None
    if fields:
        raise FaultSpecError(f"unknown fault fields {sorted(fields)} in {spec!r}")
    return fault


def _spaces(value: str | None) -> str | None:
    return None if value is None else value.replace("_", " ")


def pick(*, last_user_text: str, script: str | None, n: int) -> Fault | None:
    """The fault for request number ``n`` (1-based), if any."""
    mark = _MARK.search(last_user_text)
    if mark:
        return parse(mark.group(1))
    if script:
        entries = script.split(";")
        return parse(entries[(n - 1) % len(entries)])
    return None


async def before_answer(http: web.Request, fault: Fault) -> web.StreamResponse | None:
    """Faults that happen before an answer starts; a response ends the request."""
    if fault.kind == "slow_headers":
        await asyncio.sleep(fault.seconds)
        return None
    if fault.kind == "status":
        headers = {} if fault.retry_after is None else {"retry-after": fault.retry_after}
        kind = "rate_limit_error" if fault.status == 429 else "server_error"
        return web.json_response(
            {"error": {"message": f"simulated {fault.status}", "type": kind}},
            status=fault.status,
            headers=headers,
        )
    if fault.kind == "hang_after_headers":
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(http)
        await asyncio.sleep(fault.seconds)
        _drop(http)
        return resp
    if fault.kind == "drop_mid_stream" and not fault.streamed:
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        await resp.prepare(http)
        await resp.write(b'{"id": "cut", "object": "chat.completion", "choi')
        _drop(http)
        return resp
    return None


def _drop(http: web.Request) -> None:
    if http.transport is not None:
        http.transport.abort()


async def pace(http: web.Request, index: int) -> None:
    """Called before stream chunk ``index``: slows or drops the stream."""
    fault = CURRENT.get()
    if fault is None:
        return
    if fault.kind == "slow_chunks" and index > 0:
        await asyncio.sleep(fault.seconds)
    elif fault.kind == "drop_mid_stream" and index >= fault.after:
        _drop(http)
        raise ConnectionResetError("simulated drop mid-stream")


def reported(fault: Fault | None, *, pt: int, ct: int, report: bool) -> tuple[int, int, bool]:
    """The usage the answer reports: (prompt, completion, whether to report at all)."""
    if fault is None:
        return pt, ct, report
    if fault.kind == "usage_missing":
        return pt, ct, False
    if fault.kind == "usage_too_large":
        return pt * 10 + 1_000_000, ct * 10 + 1_000_000, True
    return pt, ct, report
