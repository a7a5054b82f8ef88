"""Privacy benchmark: detection quality on a synthetic corpus, leaks through a real
gateway, and scan cost on adversarial input.

1. Corpus (bench/privacy_corpus.py): Faker, 13 locales, fixed seed; per_kind requests
   per detector with one planted value each (content, content parts, system, name, tool
   call arguments, nested JSON, tool results, `stop`), plus look-alike requests (order
   numbers, versions, prices, timestamps, hashes, Luhn-failing cards, bad IBANs...).
2. Per detector recall (the planted value is gone and counted under its kind) and
   precision (findings of that kind that are planted values), scanning with the
   gateway's own walk; the pre-issue-14 scanner (bench/privacy_legacy.py) on the same
   corpus is the baseline.
3. Leaks: every planted request is sent through a real gateway (subprocess, all
   detectors, action redact) to a real `kascade sim-expert` that records what it
   received; a planted value found in any received field (or its digits, for numbers)
   is a leak.
4. Cost: ms per MiB on adversarial inputs (the issue's `"@ " + "a" * n` and inputs
   dense with candidates), and the worst /healthz latency while the gateway scans a
   body at its size limit, against idle /healthz latency in the same run.

    .venv/bin/python bench/privacy.py [--quick]

The last output line is one JSON object: recall_min, precision_min, leaked,
scan_ms_per_mib, and per-detector figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import privacy_corpus as corpus_mod
import privacy_legacy
from kascade.gateway import config as config_mod
from kascade.gateway.privacy import checksums, fields, redaction

PYTHON = sys.executable
MIB = 1 << 20


def _scanner() -> redaction.Scanner:
    return redaction.Scanner(privacy=config_mod.PrivacyConfig(detectors=list(corpus_mod.KINDS)))


def _strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, and in JSON held inside strings."""
    if isinstance(value, str):
        yield value
        if value[:1] in "{[":
            with contextlib.suppress(ValueError):
                yield from _strings(json.loads(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield str(value)


def _present(value: str, text: str, digits_of_text: str) -> bool:
    if value in text:
        return True
    digits = "".join(ch for ch in value if ch.isdigit())
    letters = sum(ch.isalpha() for ch in value)
    return len(digits) >= 7 and letters <= 2 and digits in digits_of_text


def _text_of(body: Any) -> tuple[str, str]:
    text = "\n".join(_strings(body))
    return text, "".join(ch for ch in text if ch.isdigit())


# ---- 2. detection quality -----------------------------------------------------------


def _figures(hits: int, gone: int, total: int, false: int) -> dict[str, Any]:
    return {
        "n": total,
        "recall": round(hits / total, 4),
        "redacted": round(gone / total, 4),
        "precision": round(hits / (hits + false), 4) if hits + false else 1.0,
        "false_positives": false,
    }


def _score(samples: list[corpus_mod.Sample], clean: list[corpus_mod.Sample]) -> dict[str, Any]:
    scanner = _scanner()
    kinds = corpus_mod.KINDS
    hits = dict.fromkeys(kinds, 0)
    gone = dict.fromkeys(kinds, 0)
    total = dict.fromkeys(kinds, 0)
    false = dict.fromkeys(kinds, 0)
    by_field: dict[str, list[int]] = {}
    misses: dict[str, list[str]] = {}
    started = time.perf_counter()
    scanned_bytes = 0
    for s in samples:
        assert s.kind is not None
        assert s.value is not None
        body = s.body
        params = {k: v for k, v in body.items() if k not in ("model", "messages")}
        result = fields.scan_request(scanner, messages=body["messages"], params=params)
        scanned_bytes += len(json.dumps(body))
        out = {"messages": result.messages or body["messages"], **(result.params or params)}
        text, digits = _text_of(out)
        total[s.kind] += 1
        removed = not _present(s.value, text, digits)
        gone[s.kind] += removed
        found = result.counts.get(s.kind, 0) > 0
        ok = removed and found
        hits[s.kind] += ok
        field = by_field.setdefault(s.field, [0, 0])
        field[0] += ok
        field[1] += 1
        if not ok:
            misses.setdefault(s.kind, []).append(s.value)
        for kind, count in result.counts.items():
            if kind != s.kind:
                false[kind] += count
            elif count > 1:
                false[kind] += count - 1
    for s in clean:
        body = s.body
        result = fields.scan_request(scanner, messages=body["messages"], params={})
        scanned_bytes += len(json.dumps(body))
        for kind, count in result.counts.items():
            false[kind] += count
    seconds = time.perf_counter() - started
    return {
        "per_kind": {
            kind: _figures(hits[kind], gone[kind], total[kind], false[kind]) for kind in kinds
        },
        "by_field_recall": {f: round(a / b, 4) for f, (a, b) in sorted(by_field.items())},
        "misses_sample": {k: v[:5] for k, v in misses.items()},
        "corpus_ms_per_mib": round(seconds * 1000 / (scanned_bytes / MIB), 1),
    }


def _score_legacy(samples: list[corpus_mod.Sample], clean: list[corpus_mod.Sample]) -> Any:
    """The old scanner, content only (what the gateway forwarded otherwise went as is)."""
    old_kinds = ["email", "phone", "credit-card", "iban", "ip-address"]
    scanner = privacy_legacy.Scanner(privacy=config_mod.PrivacyConfig(detectors=old_kinds))
    hits = dict.fromkeys(old_kinds, 0)
    total = dict.fromkeys(old_kinds, 0)
    false = dict.fromkeys(old_kinds, 0)
    for s in samples:
        result = scanner.scan(messages=s.body["messages"])
        sent = {**s.body, "messages": result.redacted_messages or s.body["messages"]}
        text, digits = _text_of(sent)
        for kind, count in result.counts.items():
            if kind != s.kind:
                false[kind] += count
        if s.kind in hits:
            assert s.value is not None
            total[s.kind] += 1
            ok = not _present(s.value, text, digits) and result.counts.get(s.kind, 0) > 0
            hits[s.kind] += ok
    for s in clean:
        for kind, count in scanner.scan(messages=s.body["messages"]).counts.items():
            false[kind] += count
    return {
        kind: {
            "recall": round(hits[kind] / total[kind], 4),
            "precision": round(hits[kind] / (hits[kind] + false[kind]), 4)
            if hits[kind] + false[kind]
            else 1.0,
        }
        for kind in old_kinds
    }


# ---- 3. leaks through a real gateway ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


@contextlib.contextmanager
def _proc(args: list[str], log: Path) -> Iterator[None]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([PYTHON, *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _gateway_config(expert: str) -> dict[str, Any]:
    return {
        "version": 1,
        "namespace": "bench",
        "limits": {"maxBodyBytes": MIB + 4096},
        "pools": {"small": {"endpoint": expert, "model": "smol"}},
        "experts": {
            "sim": {
                "provider": "openai",
                "endpoint": expert,
                "model": "sim",
                "pricing": {"inputPerMillionTokens": 0.15, "outputPerMillionTokens": 0.6},
                "budget": {"limitUSD": 1_000_000, "window": "calendar-month"},
                "rateLimits": {"requestsPerMinute": 10_000_000, "maxConcurrency": 10_000},
            }
        },
        "policies": {
            "bench": {
                "localPool": "small",
                "experts": ["sim"],
                # Every request goes to the expert: each one is a chance to leak.
                "rules": [{"when": {"minPromptTokens": 0}, "action": "expert"}],
                "privacy": {"detectors": list(corpus_mod.KINDS), "action": "redact"},
                "audit": {"enabled": False},
            }
        },
    }


async def _send_all(url: str, bodies: list[dict[str, Any]], concurrency: int) -> list[int]:
    statuses: list[int] = []
    queue = list(enumerate(bodies))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            _, body = queue.pop()
            async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
                await resp.read()
                statuses.append(resp.status)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return statuses


async def _healthz_while(url: str, body: bytes) -> dict[str, float]:
    """Worst /healthz latency while the gateway takes `body`, and when idle."""
    async with aiohttp.ClientSession() as session:

        async def probe(until: asyncio.Future[Any] | None, n: int) -> list[float]:
            times: list[float] = []
            while (until is None and len(times) < n) or (until is not None and not until.done()):
                t = time.perf_counter()
                async with session.get(f"{url}/healthz") as resp:
                    await resp.read()
                times.append((time.perf_counter() - t) * 1000)
                await asyncio.sleep(0.002)
            return times

        idle = await probe(None, 200)
        post = asyncio.ensure_future(
            session.post(
                f"{url}/v1/chat/completions",
                data=body,
                headers={"content-type": "application/json"},
            )
        )
        busy = await probe(post, 0)
        resp = await post
        status = resp.status
        resp.release()
    return {
        "idle_max_ms": round(max(idle), 2),
        "busy_max_ms": round(max(busy or [0.0]), 2),
        "probes": len(busy),
        "status": status,
    }


def _leaks(samples: list[corpus_mod.Sample], tmp: Path) -> dict[str, Any]:
    sim_port, gw_port = _free_port(), _free_port()
    sim, gw = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{gw_port}"
    record = tmp / "expert.jsonl"
    config = tmp / "gateway.json"
    config.write_text(json.dumps(_gateway_config(sim)))
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            _proc(["-m", "kascade.simexpert", "--port", str(sim_port), "--name", "sim",
                   "--record", str(record)], tmp / "sim.log")
        )  # fmt: skip
        stack.enter_context(
            _proc(["-m", "kascade.gateway.endpoints.server", "--config", str(config), "--port",
                   str(gw_port), "--log-level", "WARNING"], tmp / "gateway.log")
        )  # fmt: skip
        _wait(sim + "/healthz")
        _wait(gw + "/healthz")
        statuses = asyncio.run(_send_all(gw, [s.body for s in samples], concurrency=8))
        adversarial = {
            "issue_at_a": _adversarial_body("@ " + "a" * (MIB - 200)),
            "dense_digits": _adversarial_body("4111 555-1234 1.1.1.1 " * ((MIB - 200) // 23)),
        }
        stalls = {name: asyncio.run(_healthz_while(gw, body)) for name, body in adversarial.items()}
    received = [json.loads(line)["body"] for line in record.read_text().splitlines()]
    text, digits = _text_of(received)
    leaked: dict[str, int] = {}
    for s in samples:
        assert s.kind is not None
        assert s.value is not None
        if _present(s.value, text, digits):
            leaked[s.kind] = leaked.get(s.kind, 0) + 1
    return {
        "sent": len(samples),
        "answered_200": statuses.count(200),
        "expert_received": len(received),
        "leaked_by_kind": leaked,
        "leaked": sum(leaked.values()),
        "healthz": stalls,
    }


def _adversarial_body(text: str) -> bytes:
    return json.dumps({"model": "bench", "messages": [{"role": "user", "content": text}]}).encode()


# ---- 4. scan cost -------------------------------------------------------------------


def _cost(quick: bool) -> dict[str, Any]:
    scanner = _scanner()
    size = MIB // 16 if quick else MIB // 4
    inputs = {
        "issue_at_a": "@ " + "a" * (MIB - 2),
        "prose": _prose(MIB),
        "dense_ipv4": "1.1.1.1 " * (size // 8),
        "dense_card_groups": "4111 " * (size // 5),
        "dense_phone_like": "555-1234 " * (size // 9),
        "dense_digits": "1234567890" * (size // 10),
        "dense_dates_born": "born 1985-03-12 " * (size // 16),
    }
    out: dict[str, float] = {}
    for name, text in inputs.items():
        runs = []
        for _ in range(3 if len(text) >= MIB else 1):
            t = time.perf_counter()
            with checksums.phone_budget():
                scanner.redact_text(text, counts={})
            runs.append(time.perf_counter() - t)
        out[name] = round(statistics.median(runs) * 1000 / (len(text.encode()) / MIB), 1)
    # The baseline: the pre-issue-14 email pattern on the input, at 40 KB (it is
    # quadratic; at 1 MiB it runs for minutes).
    legacy = privacy_legacy.Scanner(privacy=config_mod.PrivacyConfig(detectors=["email"]))
    n = 10_000 if quick else 40_000
    t = time.perf_counter()
    legacy.redact_text("@ " + "a" * n, counts={})
    out[f"legacy_issue_at_a_ms_at_{n // 1000}kb"] = round((time.perf_counter() - t) * 1000, 1)
    return out


def _prose(size: int) -> str:
    c = corpus_mod.Corpus(7)
    parts: list[str] = []
    total = 0
    while total < size:
        s = c.lookalike().body["messages"][-1]["content"] or ""
        s = s if isinstance(s, str) else ""
        parts.append(s)
        total += len(s) + 1
    return " ".join(parts)[:size]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the corpus")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    per_kind, lookalikes = (60, 500) if args.quick else (600, 5000)
    samples, clean, corpus = corpus_mod.build(
        seed=args.seed, per_kind=per_kind, lookalikes=lookalikes
    )
    print(f"corpus: {len(samples)} planted, {len(clean)} look-alike requests; "
          f"Faker values dropped for failing checks: {corpus.rejected}", flush=True)  # fmt: skip
    quality = _score(samples, clean)
    for kind, figures in quality["per_kind"].items():
        print(f"{kind:14s} {json.dumps(figures)}", flush=True)
    print(f"recall by field: {json.dumps(quality['by_field_recall'])}", flush=True)
    print(f"missed (sample): {json.dumps(quality['misses_sample'], ensure_ascii=False)}")
    legacy = _score_legacy(samples, clean)
    print(f"legacy scanner (baseline): {json.dumps(legacy)}", flush=True)
    cost = _cost(args.quick)
    print(f"scan ms per MiB: {json.dumps(cost)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="kascade-privacy-bench-") as tmp:
        leaks = _leaks(samples, Path(tmp))
    print(f"gateway: {json.dumps(leaks)}", flush=True)
    per_kind = quality["per_kind"]
    result = {
        "recall_min": min(f["recall"] for f in per_kind.values()),
        "precision_min": min(f["precision"] for f in per_kind.values()),
        "leaked": leaks["leaked"],
        "scan_ms_per_mib": cost["issue_at_a"],
        "healthz_busy_max_ms": max(h["busy_max_ms"] for h in leaks["healthz"].values()),
        "healthz_idle_max_ms": max(h["idle_max_ms"] for h in leaks["healthz"].values()),
        "planted": len(samples),
        "lookalikes": len(clean),
        "per_kind": {k: [f["recall"], f["precision"]] for k, f in per_kind.items()},
        "legacy_per_kind": {k: [f["recall"], f["precision"]] for k, f in legacy.items()},
        "adversarial_ms_per_mib": cost,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
