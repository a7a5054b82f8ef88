"""The pool's Ray Serve application with the real SmolLM2 model, over real HTTP."""

from __future__ import annotations

import concurrent.futures
import json
import time
from typing import Any

import httpx
import pytest

from kascade.serving import app, sources

pytestmark = pytest.mark.serving

EASY = [{"role": "user", "content": "What is 2+2?"}]
GIBBERISH = [{"role": "user", "content": "Zqx vlorp? ffn Kaar 88 +~ wubbo qiiq tr Dzz"}]


def _chat(base_url: str, **body: Any) -> httpx.Response:
    body.setdefault("messages", EASY)
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)


def _stream(base_url: str, **body: Any) -> tuple[httpx.Response, list[dict[str, Any]]]:
    body.setdefault("messages", EASY)
    events: list[dict[str, Any]] = []
    with httpx.stream(
        "POST", f"{base_url}/v1/chat/completions", json={**body, "stream": True}, timeout=120
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    for line in lines:
        assert line.startswith("data: "), line
        payload = line.removeprefix("data: ")
        events.append({"done": True} if payload == "[DONE]" else json.loads(payload))
    return response, events


def test_chat_is_answered_with_confidence(base_url: str) -> None:
    response = _chat(base_url, temperature=0, max_tokens=32)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "smol"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert "4" in choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["prompt_tokens"] > 0
    assert 0 < body["usage"]["completion_tokens"] <= 32
    assert 0.0 <= body["confidence"] <= 1.0
    assert body["confidence_method"] == "mean-token-prob"
    assert float(response.headers["x-kascade-confidence"]) == pytest.approx(
        body["confidence"], abs=1e-6
    )


def test_temperature_zero_is_deterministic(base_url: str) -> None:
    first = _chat(base_url, messages=GIBBERISH, temperature=0, max_tokens=24).json()
    second = _chat(base_url, messages=GIBBERISH, temperature=0, max_tokens=24).json()
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    assert first["confidence"] == second["confidence"]


def test_confidence_differs_between_easy_prompt_and_gibberish(base_url: str) -> None:
    easy = _chat(base_url, messages=EASY, temperature=0, max_tokens=24).json()["confidence"]
    odd = _chat(base_url, messages=GIBBERISH, temperature=0, max_tokens=24).json()["confidence"]
    assert 0.0 <= easy <= 1.0
    assert 0.0 <= odd <= 1.0
    assert abs(easy - odd) > 0.02, (easy, odd)


def test_streaming_delivers_the_same_text_as_non_streaming(base_url: str) -> None:
    plain = _chat(base_url, temperature=0, max_tokens=40).json()
    response, events = _stream(base_url, temperature=0, max_tokens=40)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == {"done": True}
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert final["confidence"] == pytest.approx(plain["confidence"], abs=1e-9)
    assert all("confidence" not in c for c in chunks[:-1])


def test_stream_usage_chunk_when_asked(base_url: str) -> None:
    _, events = _stream(
        base_url, temperature=0, max_tokens=8, stream_options={"include_usage": True}
    )
    usage = events[-2]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] <= 8
    assert usage["usage"]["total_tokens"] == (
        usage["usage"]["prompt_tokens"] + usage["usage"]["completion_tokens"]
    )


def _replica_counts() -> dict[str, int]:
    """The replica's own record: generations running, streams whose client left early."""
    from ray import serve

    counts: dict[str, int] = serve.get_app_handle("smol").counts.remote().result(timeout_s=60)
    return counts


def test_client_leaving_a_stream_frees_the_slot(base_url: str) -> None:
    left = _replica_counts()["streamsLeft"]
    story = [{"role": "user", "content": "Tell me a very long story about a dragon."}]
    body = {"messages": story, "temperature": 0, "max_tokens": 1500, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # first token seen: hang up
    # The hang-up reached the replica through Serve's proxy and stopped the generation
    # there: a stream run to its end (1500 tokens nobody reads) would not count as left.
    # The deadline only ends the wait (a loaded CI machine is slow).
    deadline = time.monotonic() + 120
    while (counts := _replica_counts()) != {"generating": 0, "streamsLeft": left + 1}:
        assert time.monotonic() < deadline, counts
        time.sleep(0.1)  # poll interval of the replica's own count (a Serve call each)
    after = _chat(base_url, temperature=0, max_tokens=2)
    assert after.status_code == 200, after.text


def test_models_and_health(base_url: str) -> None:
    models = httpx.get(f"{base_url}/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["smol"]
    health = httpx.get(f"{base_url}/healthz", timeout=30)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model": "smol"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"max_tokens": 5}).encode(), "messages"),
        (json.dumps({"messages": "hi"}).encode(), "messages"),
        (json.dumps({"messages": EASY, "max_tokens": "5"}).encode(), "max_tokens"),
        (json.dumps({"messages": EASY, "temperature": 7}).encode(), "temperature"),
        (json.dumps({"messages": EASY, "max_tokens": 100_000}).encode(), "max_tokens"),
    ],
)
def test_bad_requests_get_400_with_openai_error(
    base_url: str, body: bytes, param: str | None
) -> None:
    response = httpx.post(
        f"{base_url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_saturated_replica_answers_429_and_accepted_requests_complete(base_url: str) -> None:
    # One slot and a queue of one: of 6 simultaneous requests at most 2 are accepted.
    def call(_: int) -> httpx.Response:
        return _chat(base_url, temperature=0, max_tokens=48, messages=GIBBERISH)

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(call, range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 429}, statuses
    accepted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert 1 <= len(accepted) <= 4, statuses
    assert len(refused) >= 2, statuses
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "replica_saturated"
    texts = {r.json()["choices"][0]["message"]["content"] for r in accepted}
    assert len(texts) == 1
    assert texts != {""}
    # No slot leaked: the replica takes a request again.
    assert _chat(base_url, temperature=0, max_tokens=4).status_code == 200


def test_bad_source_fails_clearly_under_serve(ray_serve: int) -> None:
    from ray import serve

    bad = {
        "name": "broken",
        "model": {"source": "file:///nonexistent/model.gguf"},
        "resources": {"cpu": 0.1},
    }
    with pytest.raises(RuntimeError, match="Deploying application broken failed"):
        serve.run(app.build_app(bad), name="broken", route_prefix="/broken")
    status = serve.status().applications["broken"]
    message = status.deployments["kascade-broken"].message
    assert "ModelSourceError" in message
    assert "model source 'file:///nonexistent/model.gguf': no such file" in message
    serve.delete("broken")


def test_bad_source_error_names_source_and_reason() -> None:
    with pytest.raises(sources.ModelSourceError) as info:
        sources.resolve_source(source="builtin://no-such-model")
    assert info.value.source == "builtin://no-such-model"
    assert "available: gemma3-270m, smollm2-135m-instruct" in str(info.value)


def test_application_under_a_route_prefix(ray_serve: int, base_url: str) -> None:
    from ray import serve

    pool = {
        "name": "prefixed",
        "model": {"source": "builtin://smollm2-135m-instruct"},
        "resources": {"cpu": 0.5},
        "routePrefix": "/pools/prefixed",
    }
    serve.run(app.build_app(pool), name="prefixed", route_prefix="/pools/prefixed")
    try:
        root = f"http://127.0.0.1:{ray_serve}/pools/prefixed"
        health = httpx.get(f"{root}/healthz", timeout=30)
        assert health.json() == {"status": "ok", "model": "prefixed"}
        response = httpx.post(
            f"{root}/v1/chat/completions",
            json={"messages": EASY, "temperature": 0, "max_tokens": 4},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "prefixed"
    finally:
        serve.delete("prefixed")
