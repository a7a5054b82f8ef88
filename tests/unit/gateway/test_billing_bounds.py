"""The pieces of the billing rule that need no server: the worst-case bound, request
limits, the breaker's slots and window, budget time zones, tombstone compaction."""

from __future__ import annotations

import calendar
import json

import pytest

from kascade.gateway import config, ledger
from kascade.gateway.cache import memory as cache
from kascade.gateway.endpoints import errors
from kascade.gateway.experts import breaker, capabilities, providers, worst_case
from kascade.gateway.ledger import _books, _windows
from kascade.gateway.route import bounds, request
from kascade.simexpert import bill, faults

PRICING = config.Pricing(inputPerMillionTokens=1.0, outputPerMillionTokens=4.0)


def _expert(**extra: object) -> config.ExpertConfig:
    return config.ExpertConfig.model_validate(
        {
            "provider": "openai",
            "endpoint": "http://127.0.0.1:1",
            "model": "m",
            "pricing": {"inputPerMillionTokens": 1.0, "outputPerMillionTokens": 4.0},
            "budget": {"limitUSD": 1},
            **extra,
        }
    )


def _outbound(messages: list[dict[str, object]], **params: object) -> bytes:
    return providers.build_request(
        expert=_expert(),
        api_key=None,
        messages=messages,
        params=params,
        max_tokens=100,
        stream=False,
    ).body


def test_bound_counts_every_forwarded_byte_and_the_output_limit() -> None:
    body = _outbound([{"role": "user", "content": "hello"}])
    b = worst_case.bound(body=body, pricing=PRICING)
    assert b.prompt_tokens == len(body)
    assert b.completion_tokens == 100
    assert b.nanos == len(body) * 1000 + 100 * 4000


def test_bound_counts_tool_call_arguments_and_images_at_the_ceiling() -> None:
    args = json.dumps({"q": "x" * 5000})
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}
    image = {"type": "image_url", "image_url": {"url": "https://i.example/a.png"}}
    plain = worst_case.bound(body=_outbound([{"role": "user", "content": "hi"}]), pricing=PRICING)
    tools = worst_case.bound(
        body=_outbound(
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
            ]
        ),
        pricing=PRICING,
    )
    assert tools.prompt_tokens > plain.prompt_tokens + 5000
    pictures = _outbound([{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}])
    seen = worst_case.bound(body=pictures, pricing=PRICING)
    assert seen.images == 1
    assert seen.prompt_tokens >= worst_case.DEFAULT_TOKENS_PER_IMAGE
    # An image's own bytes are replaced by the ceiling, not added to it.
    assert seen.prompt_tokens < len(pictures) + worst_case.DEFAULT_TOKENS_PER_IMAGE


def test_the_simulators_hostile_count_never_exceeds_the_bound() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 9000}}
    messages: list[dict[str, object]] = [
        {"role": "system", "content": "ü" * 300},
        {"role": "user", "content": [{"type": "text", "text": "é" * 100}, image, image]},
    ]
    body = _outbound(messages, temperature=0.5, stop=["\n"])
    decoded = json.loads(body)
    tokens = bill.byte_tokens(decoded, image_tokens=PRICING.max_tokens_per_image)
    b = worst_case.bound(body=body, pricing=PRICING)
    assert tokens <= b.prompt_tokens
    assert b.prompt_tokens < 9000  # the base64 payloads are not counted as text


def test_a_request_without_an_output_limit_has_no_bound() -> None:
    with pytest.raises(worst_case.Unbounded):
        worst_case.bound(body=b'{"model": "m", "messages": []}', pricing=PRICING)


def _error(raw: bytes) -> errors.ApiError:
    with pytest.raises(errors.ApiError) as caught:
        request.parse(raw)
    return caught.value


def test_max_tokens_beyond_the_limit_is_a_400_naming_it() -> None:
    body = {"model": "p", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**13}
    exc = _error(json.dumps(body).encode())
    assert (exc.status, exc.param) == (400, "max_tokens")


def test_deep_nesting_is_a_400_naming_the_parameter() -> None:
    deep = {"model": "p", "messages": [{"role": "user", "content": "x"}], "tools": []}
    node: list[object] = deep["tools"]  # type: ignore[assignment]
    for _ in range(bounds.MAX_DEPTH + 5):
        inner: list[object] = []
        node.append(inner)
        node = inner
    exc = _error(json.dumps(deep).encode())
    assert exc.status == 400
    assert exc.param is not None
    assert exc.param.startswith("tools")
    # Deeper than Python's parser goes at all: still a 400 naming the field.
    raw = b'{"model": "p", "messages": [], "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    exc = _error(raw)
    assert (exc.status, exc.param) == (400, "metadata")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_trial_slot_comes_back_when_the_call_ends_without_a_report() -> None:
    clock = Clock()
    b = breaker.CircuitBreaker(
        config=config.CircuitBreakerConfig(failureThreshold=1, openSeconds=5), clock=clock
    )
    b.record_failure()
    clock.now += 5
    slot = b.acquire()
    assert slot is not None
    assert b.acquire() is None
    slot.release()  # cancelled / client gone / refused by the budget
    again = b.acquire()
    assert again is not None
    again.success()
    again.release()  # after a report, release changes nothing
    assert b.state == "closed"


def test_windowed_breaker_forgets_old_failures() -> None:
    clock = Clock()
    b = breaker.CircuitBreaker(
        config=config.CircuitBreakerConfig(failureThreshold=3, windowSeconds=10), clock=clock
    )
    b.record_failure()
    b.record_failure()
    b.record_success()  # windowed: a success does not reset the count
    clock.now += 11
    b.record_failure()  # the first two left the window
    assert b.state == "closed"
    b.record_failure()
    b.record_failure()
    assert b.state == "open"


def test_calendar_windows_start_at_local_midnight() -> None:
    # 2026-11-27 23:30 UTC is already 2026-11-28 00:30 in Berlin (UTC+1).
    now = float(calendar.timegm((2026, 11, 27, 23, 30, 0)))
    assert _windows.window_key(window="calendar-day", now=now) == "day:2026-11-27"
    assert _windows.window_key(window="calendar-day", now=now, tz="Europe/Berlin") == (
        "day:2026-11-28"
    )
    start = _windows.window_start(window="calendar-day", now=now, tz="Europe/Berlin")
    assert start == float(calendar.timegm((2026, 11, 27, 23, 0, 0)))
    with pytest.raises(ValueError, match="time_zone"):
        ledger.Budget(limit_nanos=1, window="calendar-day", time_zone="Mars/Olympus")
    with pytest.raises(ValueError, match="timeZone 'Nowhere/City' is not a known IANA"):
        _expert(budget={"limitUSD": 1, "timeZone": "Nowhere/City"})


def test_settled_reservations_leave_no_tombstone() -> None:
    books = _books.Books()
    for i in range(1000):
        books.try_reserve(rid=f"r{i}", window_key="day:x", limit=10**9, amount=5, now=1.0, ttl=60)
        books.finish(rid=f"r{i}", actual=3, state="settled", now=2.0)
    assert not books.done
    assert not books.held
    assert books.spent(window_key="day:x", now=3.0) == 3000
    # An expired one keeps its tombstone so a late settle corrects it, once.
    books.try_reserve(rid="late", window_key="day:x", limit=10**9, amount=50, now=3.0, ttl=1)
    books.sweep(10.0)
    assert books.spent(window_key="day:x", now=10.0) == 3050
    assert books.finish(rid="late", actual=7, state="settled", now=11.0)
    assert books.spent(window_key="day:x", now=11.0) == 3007
    assert not books.finish(rid="late", actual=7, state="settled", now=12.0)


def test_expiry_entries_of_finished_reservations_are_bounded_not_kept_for_the_ttl() -> None:
    # Finished reservations leave their expiry entry in the heap; without compaction
    # 20,000 settled calls would keep 20,000 entries for the whole 15-minute TTL.
    books = _books.Books()
    slack = _books.STALE_EXPIRIES_SLACK
    books.try_reserve(rid="slow", window_key="day:x", limit=10**9, amount=40, now=1.0, ttl=900)
    for i in range(20_000):
        now = 2.0 + i / 1000
        books.try_reserve(rid=f"r{i}", window_key="day:x", limit=10**9, amount=5, now=now, ttl=900)
        if i % 3 == 0:  # some calls overlap: two holds at once
            books.try_reserve(
                rid=f"o{i}", window_key="day:x", limit=10**9, amount=5, now=now, ttl=900
            )
            books.finish(rid=f"o{i}", actual=0, state="released", now=now)
        books.finish(rid=f"r{i}", actual=3, state="settled", now=now)
        assert len(books.expiries) <= 2 * len(books.held) + slack + 1
    assert set(books.held) == {"slow"}
    # The call still in flight keeps its expiry through every compaction.
    books.sweep(900.0)
    assert books.reserved == {"day:x": 40}
    books.sweep(902.0)
    assert books.spent(window_key="day:x", now=902.0) == 20_000 * 3 + 40
    assert not books.held
    assert len(books.expiries) <= slack + 1


def test_capabilities_a_request_needs() -> None:
    body = {
        "stream": True,
        "tools": [{"type": "function"}],
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
    }
    assert capabilities.required(body) == {"chat", "streaming", "tools", "vision"}
    cfg = _expert(capabilities=["chat"])
    assert cfg.capabilities == ["chat"]


def test_fault_specs_parse_or_name_the_bad_part() -> None:
    fault = faults.parse("kind=status status=429 retry_after=Wed,_21_Oct_2099_07:28:00_GMT")
    assert fault is not None
    assert fault.retry_after == "Wed, 21 Oct 2099 07:28:00 GMT"
    assert not fault.billed
    assert faults.pick(last_user_text="x", script="kind=usage_missing;", n=2) is None
    with pytest.raises(faults.FaultSpecError, match="kind"):
        faults.parse("kind=explode")


def _completion(text: str) -> dict[str, object]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def test_exact_cache_is_bounded_in_bytes_and_keys_are_digests() -> None:
    exact = cache.ExactCache(ttl_seconds=60, max_entries=10_000, max_bytes=100_000)
    big_prompt = {"messages": [{"role": "user", "content": "p" * 200_000}]}
    key = cache.exact_key(policy="p", body=big_prompt)
    assert len(key) == 32  # a 200 KB prompt costs 32 bytes of key
    for i in range(100):
        exact.put(bytes([i]) * 32, completion=_completion("a" * 5000), route="r", confidence=None)
    assert exact.bytes <= 100_000
    assert 10 < len(exact) < 25
    assert exact.get(bytes([99]) * 32) is not None  # the newest stay
    assert exact.get(bytes([0]) * 32) is None


def test_semantic_cache_is_bounded_and_skips_long_prompts() -> None:
    sem = cache.SemanticCache(
        config=config.SemanticCache(threshold=0.8, ttlSeconds=60, maxBytes=200_000)
    )
    ctx = cache.exact_key(policy="p", body={"messages": []})
    for i in range(50):
        sem.put(
            context=ctx, text=f"question {i} about llamas", completion=_completion("x"),
            route="r", confidence=None,
        )  # fmt: skip
    assert sem.bytes <= 200_000
    assert len(sem) < 50
    hit = sem.lookup(context=ctx, text="question 49 about llamas")
    assert hit is not None
    assert sem.lookup(context=ctx, text="question 0 about llamas") is None  # evicted
    assert sem.lookup(context=ctx, text="question 77 about llamas") is None  # numbers differ
    long = "word " * (cache.SEMANTIC_MAX_CHARS // 5 + 1)
    sem.put(context=ctx, text=long, completion=_completion("y"), route="r", confidence=None)
    assert sem.lookup(context=ctx, text=long) is None
