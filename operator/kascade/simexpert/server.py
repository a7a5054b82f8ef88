"""The simulated expert's HTTP server and CLI (`kascade sim-expert`)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import IO, Any

from aiohttp import web

from kascade.api import wire
from kascade.simexpert import bill as bill_mod
from kascade.simexpert import faults, replies

_CONFIDENCE_MARK = re.compile(r"\[\[confidence=([0-9.]+)\]\]")


@dataclass
class Settings:
    """Behaviour knobs; every field can be changed at runtime via POST /_sim/config."""

    name: str = "sim"
    latency_ms: float = 0.0
    prompt_tokens: int | None = None
    """Reported prompt tokens (None: about characters / 4)."""
    completion_tokens: int | None = None
    """Reported completion tokens (None: words of the answer)."""
    report_usage: bool = True
    fail_every: int = 0
    """Every Nth request answers `fail_status` (0: never)."""
    fail_fraction: float = 0.0
    fail_status: int = 500
    throttle_every: int = 0
    """Every Nth request answers 429 with Retry-After (0: never)."""
    throttle_fraction: float = 0.0
    retry_after: float = 1.0
    hang_every: int = 0
    """Every Nth request hangs for `hang_seconds` before answering (a timeout)."""
    hang_fraction: float = 0.0
    hang_seconds: float = 300.0
    confidence: float | None = None
    """Adds a `confidence` field (acts as a local pool); `[[confidence=X]]` in the
    prompt overrides it."""
    answer: str | None = None
    """Fixed answer text (None: a deterministic echo of the last user message)."""
    off_schema: bool = False
    """Tool arguments and structured answers break their schema (not enforced)."""
    confidence_signals: dict[str, float] | None = None
    """Sent as `confidence_signals` next to `confidence` (a scripted Kascade pool's
    token signals, for the gateway's combined score)."""
    record_body: bool = True
    fault_script: str | None = None
    """`;`-separated fault specs applied by arrival order (see simexpert/faults.py)."""
    token_mode: str = "estimate"
    """`estimate`: about characters / 4 and the answer's words; `bytes`: the most a
    tokenizer could count (one per byte, images at image_tokens) and max_tokens out."""
    image_tokens: int = 765
    """Prompt tokens one image part costs (token_mode bytes)."""
    input_per_million: float = 0.0
    """USD per million prompt tokens on the simulator's own bill."""
    output_per_million: float = 0.0
    """USD per million completion tokens on the simulator's own bill."""


@dataclass
class _Sim:
    settings: Settings
    count: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    record_file: IO[str] | None = None
    bill: bill_mod.Bill = field(default_factory=bill_mod.Bill)


SIM: web.AppKey[_Sim] = web.AppKey("sim", _Sim)


def _every(n: int, count: int) -> bool:
    return n > 0 and count % n == 0


def _fraction(fraction: float, count: int, salt: str) -> bool:
    # Deterministic "random": a hash of the request number, so runs are repeatable.
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(f"{salt}{count}".encode(), digest_size=4).digest())
    return (h / 2**32) < fraction


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _outcome(s: Settings, n: int) -> str:
    """``ok``, ``hang``, ``429`` or a failure status, from the scripted knobs."""
    if _every(s.hang_every, n) or _fraction(s.hang_fraction, n, "hang"):
        return "hang"
    if _every(s.throttle_every, n) or _fraction(s.throttle_fraction, n, "429"):
        return "429"
    if _every(s.fail_every, n) or _fraction(s.fail_fraction, n, "fail"):
        return str(s.fail_status)
    return "ok"


def _received(http: web.Request, raw: bytes, body: Any, n: int, *, dialect: str) -> dict[str, Any]:
    """The simulator's own record of what it received (never the credential itself)."""
    keep = http.app[SIM].settings.record_body
    return {
        "n": n,
        "t": time.time(),
        "path": http.path_qs,
        "dialect": dialect,
        "auth": bool(
            http.headers.get("authorization")
            or http.headers.get("api-key")
            or http.headers.get("x-api-key")
        ),
        "body": body if keep else None,
        "raw": raw.decode("utf-8", "replace") if keep else None,
    }


def _keep(sim: _Sim, record: dict[str, Any]) -> None:
    sim.records.append(record)
    if sim.record_file is not None:
        sim.record_file.write(json.dumps(record) + "\n")
        sim.record_file.flush()


def _refusal(s: Settings, outcome: str) -> web.Response | None:
    if outcome == "429":
        return web.json_response(
            {"error": {"message": "rate limited (simulated)", "type": "rate_limit_error"}},
            status=429,
            headers={"retry-after": f"{s.retry_after:g}"},
        )
    if outcome not in ("ok", "hang"):
        return web.json_response(
            {"error": {"message": "simulated failure", "type": "server_error"}},
            status=int(outcome),
        )
    return None


async def _handle(http: web.Request, *, dialect: str) -> web.StreamResponse:
    sim = http.app[SIM]
    s = sim.settings
    sim.count += 1
    n = sim.count
    raw = await http.read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    record = _received(http, raw, body, n, dialect=dialect)
    if s.latency_ms > 0:
        await asyncio.sleep(s.latency_ms / 1000)
    outcome = _outcome(s, n)
    valid = isinstance(body, dict) and isinstance(body.get("messages"), list)
    fault = _fault(body, s, n) if valid else None
    record["fault"] = None if fault is None else fault.kind
    record["outcome"] = outcome
    refused = outcome == "429" or (outcome.isdigit() and int(outcome) < 500)
    if valid and not refused and (fault is None or fault.billed):
        why = fault.kind if fault else outcome
        record["bill_nanos"] = _bill(sim, body, n, why=why, dialect=dialect)
    _keep(sim, record)
    if outcome == "hang":
        await asyncio.sleep(s.hang_seconds)
    refusal = _refusal(s, outcome)
    if refusal is not None:
        return refusal
    if not valid:
        return web.json_response({"error": {"message": "messages required"}}, status=400)
    if fault is not None:
        fault = dataclasses.replace(fault, streamed=body.get("stream") is True)
        faults.CURRENT.set(fault)
        ended = await faults.before_answer(http, fault)
        if ended is not None:
            return ended
    return await _answer(http, sim, body, dialect=dialect)


def _fault(body: Any, s: Settings, n: int) -> faults.Fault | None:
    messages = [m for m in body["messages"] if isinstance(m, dict)]
    users = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
    return faults.pick(last_user_text=users[-1] if users else "", script=s.fault_script, n=n)


def _usage(s: Settings, body: dict[str, Any], text: str) -> tuple[int, int]:
    """The honest usage of answering ``body`` with ``text`` (what the bill charges)."""
    messages = [m for m in body["messages"] if isinstance(m, dict)]
    max_tokens = bill_mod.max_tokens(body)
    if s.token_mode == "bytes":
        pt = bill_mod.byte_tokens(body, image_tokens=s.image_tokens)
        return pt, max_tokens or max(1, len(text.split()))
    prompt_chars = sum(len(_text(m.get("content"))) for m in messages)
    prompt_chars += len(str(body.get("system", "")))
    pt = s.prompt_tokens if s.prompt_tokens is not None else max(1, prompt_chars // 4)
    ct = s.completion_tokens if s.completion_tokens is not None else max(1, len(text.split()))
    return pt, min(ct, max_tokens) if max_tokens else ct


def _answer_text(s: Settings, body: dict[str, Any], *, dialect: str) -> str:
    messages = [m for m in body["messages"] if isinstance(m, dict)]
    users = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
    last = users[-1] if users else ""
    if s.answer is not None:
        return s.answer
    plan = replies.plan(body, dialect=dialect, name=s.name, last=last, off_schema=s.off_schema)
    return plan.text if plan.text is not None else f"[{s.name}] {last}"


def _bill(sim: _Sim, body: dict[str, Any], n: int, *, why: str, dialect: str) -> int:
    """Bills the request at generation start; a 5xx is billed as generating to max_tokens."""
    s = sim.settings
    pt, ct = _usage(s, body, _answer_text(s, body, dialect=dialect))
    if why.isdigit() or why == "status":
        ct = max(ct, bill_mod.max_tokens(body))
    return sim.bill.charge(
        n=n,
        prompt_tokens=pt,
        completion_tokens=ct,
        input_per_million=s.input_per_million,
        output_per_million=s.output_per_million,
        why=why,
    )


async def _answer(
    http: web.Request, sim: _Sim, body: dict[str, Any], *, dialect: str
) -> web.StreamResponse:
    s = sim.settings
    messages = [m for m in body["messages"] if isinstance(m, dict)]
    users = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
    last = users[-1] if users else ""
    text = _answer_text(s, body, dialect=dialect)
    pt, ct = _usage(s, body, text)
    pt, ct, report = faults.reported(faults.CURRENT.get(), pt=pt, ct=ct, report=s.report_usage)
    if report != s.report_usage:
        s = dataclasses.replace(s, report_usage=report)
    plan = replies.plan(body, dialect=dialect, name=s.name, last=last, off_schema=s.off_schema)
    mark = _CONFIDENCE_MARK.search(last)
    confidence = float(mark.group(1)) if mark else s.confidence
    model = str(body.get("model", s.name))
    rid = f"{s.name}-{sim.count}"
    stream = body.get("stream") is True
    if plan.calls:
        options = body.get("stream_options")
        return await replies.respond(
            http,
            dialect=dialect,
            calls=plan.calls,
            rid=rid,
            model=model,
            usage=(pt, ct) if s.report_usage else None,
            stream=stream,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            confidence=confidence,
        )
    if dialect == "anthropic":
        if stream:
            return await _anthropic_stream(http, s, rid, model, text, pt, ct)
        return web.json_response(_anthropic_message(s, rid, model, text, pt, ct))
    headers = {} if confidence is None else {wire.CONFIDENCE_HEADER: f"{confidence}"}
    if stream:
        return await _openai_stream(http, s, rid, model, text, pt, ct, headers, body)
    payload = _openai_completion(s, rid, model, text, pt, ct, confidence)
    return web.json_response(payload, headers=headers)


def _anthropic_message(
    s: Settings, rid: str, model: str, text: str, pt: int, ct: int
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": rid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
    }
    if s.report_usage:
        payload["usage"] = {"input_tokens": pt, "output_tokens": ct}
    return payload


def _openai_completion(
    s: Settings, rid: str, model: str, text: str, pt: int, ct: int, confidence: float | None
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }
    if s.report_usage:
        payload["usage"] = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
    if confidence is not None:
        payload[wire.CONFIDENCE_FIELD] = confidence
        if s.confidence_signals is not None:
            payload[wire.CONFIDENCE_SIGNALS_FIELD] = s.confidence_signals
    return payload


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p if i == 0 else " " + p for i, p in enumerate(parts)]


async def _openai_stream(
    http: web.Request,
    s: Settings,
    rid: str,
    model: str,
    text: str,
    pt: int,
    ct: int,
    headers: dict[str, str],
    body: dict[str, Any],
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", **headers})
    await resp.prepare(http)
    base = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    for i, word in enumerate(_words(text)):
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        await faults.pace(http, i)
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    end = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    await faults.pace(http, len(text.split(" ")))
    await resp.write(b"data: " + json.dumps(end).encode() + b"\n\n")
    options = body.get("stream_options")
    if s.report_usage and isinstance(options, dict) and options.get("include_usage"):
        usage = {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        }
        await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _anthropic_stream(
    http: web.Request, s: Settings, rid: str, model: str, text: str, pt: int, ct: int
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(http)

    async def event(kind: str, data: dict[str, Any]) -> None:
        await resp.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())

    usage_in = {"input_tokens": pt, "output_tokens": 0} if s.report_usage else {}
    await event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": rid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "usage": usage_in,
            },
        },
    )
    await event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    for i, word in enumerate(_words(text)):
        await faults.pace(http, i)
        await event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": word},
            },
        )
    await faults.pace(http, len(text.split(" ")))
    await event("content_block_stop", {"type": "content_block_stop", "index": 0})
    delta: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
    if s.report_usage:
        delta["usage"] = {"output_tokens": ct}
    await event("message_delta", delta)
    await event("message_stop", {"type": "message_stop"})
    await resp.write_eof()
    return resp


async def _openai(http: web.Request) -> web.StreamResponse:
    return await _handle(http, dialect="openai")


async def _azure(http: web.Request) -> web.StreamResponse:
    return await _handle(http, dialect="azure")


async def _anthropic(http: web.Request) -> web.StreamResponse:
    return await _handle(http, dialect="anthropic")


async def _get_requests(http: web.Request) -> web.Response:
    return web.json_response(http.app[SIM].records)


async def _clear_requests(http: web.Request) -> web.Response:
    sim = http.app[SIM]
    sim.records.clear()
    sim.count = 0
    sim.bill = bill_mod.Bill()
    return web.json_response({"cleared": True})


async def _get_bill(http: web.Request) -> web.Response:
    return web.json_response(http.app[SIM].bill.summary())


async def _get_config(http: web.Request) -> web.Response:
    return web.json_response(dataclasses.asdict(http.app[SIM].settings))


async def _set_config(http: web.Request) -> web.Response:
    sim = http.app[SIM]
    data = await http.json()
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = set(data) - known
    if unknown:
        return web.json_response(
            {"error": f"unknown settings {sorted(unknown)}; known: {sorted(known)}"}, status=400
        )
    sim.settings = dataclasses.replace(sim.settings, **data)
    return web.json_response(dataclasses.asdict(sim.settings))


async def _models(http: web.Request) -> web.Response:
    name = http.app[SIM].settings.name
    return web.json_response({"object": "list", "data": [{"id": name, "object": "model"}]})


def build_app(*, settings: Settings, record_path: str | None = None) -> web.Application:
    """The simulator as an aiohttp application (in-process tests run it on a real socket)."""
    app = web.Application(client_max_size=1 << 26)
    sim = _Sim(settings=settings)
    app[SIM] = sim

    async def lifecycle(app: web.Application) -> Any:
        if record_path is not None:
            sim.record_file = open(record_path, "a", encoding="utf-8")  # noqa: SIM115, ASYNC230  (held for the app; closed below; one open at startup)
        yield
        if sim.record_file is not None:
            sim.record_file.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/chat/completions", _openai)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", _azure)
    app.router.add_post("/v1/messages", _anthropic)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/_sim/requests", _get_requests)
    app.router.add_delete("/_sim/requests", _clear_requests)
    app.router.add_get("/_sim/bill", _get_bill)
    app.router.add_get("/_sim/config", _get_config)
    app.router.add_post("/_sim/config", _set_config)
    app.router.add_get("/healthz", lambda _: _ok())
    return app


async def _ok() -> web.Response:
    return web.Response(text="ok")


_HELP = {
    "name": "name in answers ([name] <last user message>) and ids",
    "latency_ms": "delay before answering",
    "prompt_tokens": "reported prompt tokens (default: characters / 4)",
    "completion_tokens": "reported completion tokens (default: words of the answer)",
    "report_usage": "true/false: include usage in answers",
    "fail_every": "every Nth request answers --fail-status",
    "fail_fraction": "this fraction of requests answers --fail-status (deterministic)",
    "fail_status": "status of simulated failures (default 500)",
    "throttle_every": "every Nth request answers 429 with Retry-After",
    "throttle_fraction": "this fraction of requests answers 429",
    "retry_after": "seconds in the Retry-After of simulated 429s",
    "hang_every": "every Nth request hangs for --hang-seconds (a timeout)",
    "hang_fraction": "this fraction of requests hangs",
    "hang_seconds": "how long a hang lasts",
    "confidence": "add this confidence to answers (act as a local pool)",
    "answer": "fixed answer text",
    "off_schema": "true/false: tool arguments and structured answers break their schema",
    "record_body": "true/false: keep request bodies in the record",
    "fault_script": "';'-separated fault specs by arrival order (see simexpert/faults.py)",
    "token_mode": "estimate (characters / 4) or bytes (the most a tokenizer could count)",
    "image_tokens": "prompt tokens per image part (token mode bytes)",
    "input_per_million": "USD per million prompt tokens on the simulator's own bill",
    "output_per_million": "USD per million completion tokens on the simulator's own bill",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kascade sim-expert", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--record", default=None, help="append what was received to this JSONL file")
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        help_text = _HELP.get(f.name)
        if f.type == "bool":
            p.add_argument(
                flag,
                type=lambda v: v.lower() in ("1", "true", "yes"),
                default=None,
                help=help_text,
            )
        elif f.type in ("int", "int | None"):
            p.add_argument(flag, type=int, default=None, help=help_text)
        elif f.type in ("float", "float | None"):
            p.add_argument(flag, type=float, default=None, help=help_text)
        else:
            p.add_argument(flag, default=None, help=help_text)
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs the simulator until interrupted."""
    args = _parser().parse_args(argv)
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Settings)
        if getattr(args, f.name) is not None
    }
    settings = Settings(**overrides)
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    web.run_app(
        build_app(settings=settings, record_path=args.record),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop,
    )
    return 0
