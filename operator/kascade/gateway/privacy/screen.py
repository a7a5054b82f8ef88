"""The pipeline's privacy step: scan what would leave the cluster, decide what may.

Small requests are scanned inline, where a hop elsewhere would cost more than the scan.
Larger ones in a worker thread, so the event loop keeps answering (`/healthz`, other
requests). The largest in a worker process: a text dense with candidates costs Python
work per candidate, and in a thread that work shares the interpreter lock with the
event loop (a 1 MiB body of candidates delayed `/healthz` by up to 200 ms).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.process
import functools
import multiprocessing
from dataclasses import dataclass
from typing import Any

from kascade.gateway import config as config_mod
from kascade.gateway.endpoints import errors
from kascade.gateway.privacy import fields, redaction

INLINE_BYTES = 16 << 10
"""Requests up to this size are scanned on the event loop (well under a millisecond)."""
PROCESS_BYTES = 256 << 10
"""Requests above this size are scanned in the privacy process."""
_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_PROCESSES: concurrent.futures.ProcessPoolExecutor | None = None
_CHILD_SCANNERS: dict[str, redaction.Scanner] = {}
"""In the privacy process: scanners by their policy's privacy config."""


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        # Two workers: large scans queue instead of taking every core from the loop.
        _POOL = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="kascade-privacy")
    return _POOL


def _processes() -> concurrent.futures.ProcessPoolExecutor:
    global _PROCESSES
    if _PROCESSES is None:
        # One process, started on first use ("spawn": never a fork of a running loop).
        context = multiprocessing.get_context("spawn")
        _PROCESSES = concurrent.futures.ProcessPoolExecutor(1, mp_context=context)
    return _PROCESSES


def _scan_in_child(
    privacy_json: str, messages: list[dict[str, Any]], params: dict[str, Any]
) -> fields.RequestScan:
    scanner = _CHILD_SCANNERS.get(privacy_json)
    if scanner is None:
        privacy = config_mod.PrivacyConfig.model_validate_json(privacy_json)
        scanner = _CHILD_SCANNERS[privacy_json] = redaction.Scanner(privacy=privacy)
    return fields.scan_request(scanner, messages=messages, params=params)


@dataclass
class Screened:
    """What may leave the cluster for this request."""

    messages: list[dict[str, Any]]
    params: dict[str, Any]
    counts: dict[str, int]
    local_only: bool = False
    raw_pii: bool = False
    done: str | None = None
    """`redacted`, `local-only` or `allowed` when personal data was found."""


async def scan(
    scanner: redaction.Scanner,
    *,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    size: int,
) -> fields.RequestScan:
    """Scans inline when the request is small, in the privacy thread when larger, in
    the privacy process when largest (back to the thread if that process broke)."""
    global _PROCESSES
    run = functools.partial(fields.scan_request, scanner, messages=messages, params=params)
    if size <= INLINE_BYTES:
        return run()
    loop = asyncio.get_running_loop()
    if size > PROCESS_BYTES:
        privacy_json = scanner.privacy.model_dump_json(by_alias=True)
        child = functools.partial(_scan_in_child, privacy_json, messages, params)
        try:
            return await loop.run_in_executor(_processes(), child)
        except concurrent.futures.process.BrokenProcessPool:
            _PROCESSES = None  # started again on the next large request
    return await loop.run_in_executor(_pool(), run)


def decide(
    privacy: config_mod.PrivacyConfig,
    result: fields.RequestScan,
    *,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    has_experts: bool,
) -> Screened:
    """Applies the policy's action; raises a 400 naming the first part no detector can
    read when it would have to leave the cluster unscanned."""
    out = Screened(messages=messages, params=params, counts=result.counts)
    if result.unscannable and privacy.action != "allow" and has_experts:
        if privacy.unscannable == "reject":
            path = result.unscannable[0]
            raise errors.ApiError(
                status=400,
                message=f"`{path}` is binary data (an image, audio or file) that the "
                f"privacy scan cannot read, and this policy's privacy action "
                f"`{privacy.action}` forbids sending unscanned data to cloud experts. Send "
                "text, an https image URL, or use a policy with "
                "privacy.unscannable: local-only or allow.",
                param=path,
                code="unscannable_content",
            )
        if privacy.unscannable == "local-only":
            out.local_only = True
    if not result.found:
        return out
    if privacy.action == "redact":
        out.messages = result.messages if result.messages is not None else messages
        out.params = result.params if result.params is not None else params
        out.done = "redacted"
    elif privacy.action == "local-only":
        out.local_only = True
        out.done = "local-only"
    else:
        out.raw_pii = True
        out.done = "allowed"
    return out


def audit_prompt(
    result: fields.RequestScan, *, messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The messages as an audit line may hold them: redacted whatever the policy's action
    (local-only and allow keep the original for the model, never for the log)."""
    return result.messages if result.messages is not None else messages
