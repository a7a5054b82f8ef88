"""A declared quality target on real sockets: a scripted local pool (sim-expert acting as
a pool) whose answers are right with known probabilities, the simulated expert as the
judge, and the gateway learning the threshold from sampled labels and shadow calls."""

from __future__ import annotations

import asyncio
import collections
import random
from typing import Any

import aiohttp
import pytest
from tests import quality_support
from tests.integration.gateway.conftest import chat, expert_config, gateway_config

WINDOW = 300
TARGET = {
    "maxLocalErrorRate": 0.15,
    "confidenceLevel": 0.9,
    "shadowFraction": 1.0,
    "maxShadowBudgetShare": 1.0,
    "windowLabels": WINDOW,
    "minLabels": 50,
}


def _item(rng: random.Random, *, drifted: bool) -> tuple[float, bool]:
    """(score, right) with known error rates: half the answers score in [0, 0.5] and are
    right 20% of the time; half score in [0.8, 1] and are right 99% of the time, except
    after the drift, when those in [0.8, 0.9) are right only half of the time."""
    if rng.random() < 0.5:
        return round(rng.uniform(0.0, 0.5), 3), rng.random() < 0.2
    score = round(rng.uniform(0.8, 1.0), 3)
    if drifted and score < 0.9:
        return score, rng.random() < 0.5
    return score, rng.random() < 0.99


def _prompt(score: float, right: bool) -> str:
    # The pool always answers "42"; the expert echoes the prompt, so the label is
    # right exactly when the prompt's answer is 42.
    return f"The answer is {42 if right else 7}. [[confidence={score}]]"


async def _ask(http: aiohttp.ClientSession, url: str, content: str, **extra: Any) -> dict[str, str]:
    body = chat(content, max_tokens=10, **extra)
    async with http.post(f"{url}/v1/chat/completions", json=body) as r:
        await r.read()
        assert r.status == 200
        return dict(r.headers)


async def _settled(gw: Any) -> None:
    """Waits until no shadow call is in flight (they run after the response)."""
    for _ in range(2000):
        if not gw.state.quality.tasks:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("shadow calls still in flight")


async def _status(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/v1/kascade/status") as resp:
        document: dict[str, Any] = await resp.json()
        return document


async def _phase(
    http: aiohttp.ClientSession, gw: Any, rng: random.Random, *, drifted: bool
) -> list[tuple[bool, bool]]:
    """Sends one window of requests; returns (kept local, right) per request."""
    out = []
    for _ in range(WINDOW):
        score, right = _item(rng, drifted=drifted)
        headers = await _ask(http, gw.url, _prompt(score, right))
        out.append((headers["x-kascade-route"] == "local", right))
    await _settled(gw)
    return out


async def test_the_learned_threshold_reaches_the_target_and_follows_a_drift(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.5, answer="42")
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(expert.url)},
            policy={"confidence": {"threshold": 0.7, "target": TARGET}},
        )
    )
    rng = random.Random(11)
    first = await _phase(http, gw, rng, drifted=False)
    learned = (await _status(http, gw.url))["quality"]["default"]["tasks"]["*"]
    assert learned["labels"] == WINDOW
    assert learned["threshold"] <= 0.8  # every reliable answer is kept local
    assert learned["localErrorUpperBound"] <= 0.15
    audit = gw.audit()
    requests = [line for line in audit if line["type"] == "request"]
    assert not requests[0]["threshold_learned"]  # the policy's 0.7 until labels exist
    assert requests[-1]["threshold_learned"]
    assert requests[-1]["threshold"] == learned["threshold"]
    changes = [line for line in audit if line["type"] == "threshold"]
    assert changes
    assert changes[-1]["threshold"] == learned["threshold"]
    # Drift: answers scoring in [0.8, 0.9) turn unreliable; their labels replace the old.
    await _phase(http, gw, rng, drifted=True)
    drifted = (await _status(http, gw.url))["quality"]["default"]["tasks"]["*"]
    assert drifted["threshold"] >= 0.85
    # Recovery: the pool is reliable again, and the threshold comes back down.
    last = await _phase(http, gw, rng, drifted=False)
    recovered = (await _status(http, gw.url))["quality"]["default"]["tasks"]["*"]
    assert recovered["threshold"] <= 0.8
    # What the target promises, checked against the known truth of the last window.
    kept = [right for local, right in first[WINDOW // 2 :] + last[WINDOW // 2 :] if local]
    assert kept
    assert 1 - sum(kept) / len(kept) <= 0.15
    async with http.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    assert (
        f'kascade_learned_threshold{{policy="default",task="*",variant=""}} '
        f"{recovered['threshold']}" in text
    )
    assert (
        'kascade_shadow_calls_total{expert="e1",outcome="answered",policy="default",variant=""}'
        in text
    )


async def test_shadow_calls_never_spend_past_their_share_of_the_budget(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.5, answer="42")
    expert = await start_sim(name="e1")
    limit_usd = 0.02
    share = 0.05  # shadow calls may spend $0.001: about a dozen worst cases of $0.000084
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={
                "e1": expert_config(
                    expert.url, budget={"limitUSD": limit_usd, "window": "calendar-day"}
                )
            },
            policy={
                "confidence": {
                    "threshold": 0.0,  # every answer is kept local: labels need shadow calls
                    "target": {**TARGET, "maxShadowBudgetShare": share},
                }
            },
        )
    )
    rng = random.Random(12)
    for _ in range(60):
        score, right = _item(rng, drifted=False)
        await _ask(http, gw.url, _prompt(score, right))
    await _settled(gw)
    quality = gw.state.quality.policy(
        name="default", target=gw.state.runtime.policies["default"].config.confidence.target
    )
    e1 = gw.state.experts["e1"]
    spent_nanos = await quality.budget.spent(
        ledger_backend=gw.state.escalator.ledger, expert="e1", budget=e1.budget
    )
    assert 0 < spent_nanos <= share * limit_usd * 1e9
    async with http.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    assert (
        'kascade_shadow_calls_total{expert="e1",outcome="refused_share",policy="default",'
        'variant=""}' in text
    )
    answered = len(expert.records)
    assert 0 < answered < 60
    # Shadow calls are paid from the expert's budget like any call: the ledger has them.
    status = await _status(http, gw.url)
    assert float(status["experts"]["e1"]["budget"]["spentUSD"]) * 1e9 == spent_nanos


async def _metrics(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics") as resp:
        return await resp.text()


@pytest.mark.redis
async def test_two_replicas_on_one_redis_spend_one_shadow_share_in_total(
    redis_url: str, start_sim, start_gateway, http
) -> None:
    """The share is the policy's, not each replica's: two gateways on one Redis ledger,
    every answer kept local (so every label needs a shadow call), and what the expert
    itself bills for shadow calls stays within one share, while each replica alone
    could have spent all of it."""
    pool = await start_sim(name="pool", confidence=0.5, answer="42")
    # The expert's own bill at the prices the gateway is configured with (expert_config).
    expert = await start_sim(name="e1", input_per_million=1.0, output_per_million=2.0)
    limit_usd, share = 0.02, 0.05  # $0.001 of shadow spend: about a dozen worst cases
    config = gateway_config(
        pool=pool.url,
        experts={
            "e1": expert_config(
                expert.url, budget={"limitUSD": limit_usd, "window": "calendar-day"}
            )
        },
        policy={
            "confidence": {
                "threshold": 0.0,
                "target": {**TARGET, "maxShadowBudgetShare": share},
            }
        },
        ledger={"url": redis_url},
    )
    replicas = [await start_gateway(config, name=name) for name in ("gw-a", "gw-b")]
    rng = random.Random(13)
    for i in range(120):
        score, right = _item(rng, drifted=False)
        await _ask(http, replicas[i % 2].url, _prompt(score, right))
    for gw in replicas:
        await _settled(gw)
    billed = sum(int(record.get("bill_nanos") or 0) for record in expert.records)
    assert 0 < billed <= share * limit_usd * 1e9
    for gw in replicas:
        text = await _metrics(http, gw.url)
        for outcome in ("answered", "refused_share"):
            assert (
                f'kascade_shadow_calls_total{{expert="e1",outcome="{outcome}",'
                f'policy="default",variant=""}}' in text
            ), (gw.url, outcome)


async def test_only_listed_tasks_learn_their_own_threshold(start_sim, start_gateway, http) -> None:
    pool = await start_sim(name="pool", confidence=0.5, answer="42")
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(expert.url)},
            policy={"confidence": {"target": {**TARGET, "minLabels": 10, "tasks": ["math"]}}},
        )
    )
    for i in range(40):
        task = "math" if i % 2 == 0 else "poetry"
        async with http.post(
            f"{gw.url}/v1/chat/completions",
            json=chat(_prompt(0.95, True), max_tokens=10),
            headers={"x-kascade-task": task},
        ) as resp:
            assert resp.status == 200
    await _settled(gw)
    tasks = (await _status(http, gw.url))["quality"]["default"]["tasks"]
    assert set(tasks) == {"*", "math"}  # an unlisted label is not a key (bounded metrics)
    assert tasks["math"]["labels"] == 20
    assert tasks["*"]["labels"] == 40
    assert tasks["math"]["threshold"] is not None


async def test_each_variant_learns_its_own_threshold_from_its_own_labels(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.5, answer="42")
    # The other arm's pool echoes the prompt, as the expert does: it is always right,
    # whatever its score. Pooled with the first arm's labels it would pull the first
    # arm's threshold down past its unreliable answers.
    echo = await start_sim(name="echo", confidence=0.5)
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(expert.url)},
            pools={"echo": {"endpoint": echo.url, "model": "smol", "timeoutSeconds": 5}},
            policy={
                "confidence": {"threshold": 0.7, "target": TARGET},
                "variants": [
                    {"name": "main", "weight": 1},
                    {"name": "echo", "weight": 1, "localPool": "echo",
                     "confidence": {"threshold": 0.3, "target": TARGET}},
                ],
            },
        )
    )  # fmt: skip
    rng = random.Random(13)
    served = {"main": 0, "echo": 0}
    kept_main = []
    for i in range(WINDOW):  # callers stick to their arm; half land in each
        score, right = _item(rng, drifted=False)
        headers = await _ask(http, gw.url, _prompt(score, right), user=f"caller-{i}")
        served[headers["x-kascade-variant"]] += 1
        if headers["x-kascade-variant"] == "main" and headers["x-kascade-route"] == "local":
            kept_main.append(right)
    await _settled(gw)
    entry = (await _status(http, gw.url))["quality"]["default"]
    assert set(entry) == {"variants"}  # no pooled figures: every request had an arm
    arms = {name: figures["tasks"]["*"] for name, figures in entry["variants"].items()}
    # Each arm labelled its own requests and learned from them.
    assert {name: arm["labels"] for name, arm in arms.items()} == served
    assert arms["echo"]["threshold"] == 0.05  # every answer right: keep (nearly) all
    assert arms["main"]["threshold"] >= 0.45  # its answers under 0.5 are mostly wrong
    assert arms["main"]["localErrorUpperBound"] <= 0.15
    assert len(kept_main) >= 30
    assert 1 - sum(kept_main) / len(kept_main) <= 0.15  # the truth of what it kept
    requests = [line for line in gw.audit() if line["type"] == "request"]
    for name, arm in arms.items():
        last = [line for line in requests if line["variant"] == name][-1]
        assert last["threshold_learned"]
        assert last["threshold"] == arm["threshold"]
    changes = [line for line in gw.audit() if line["type"] == "threshold"]
    assert {line["variant"] for line in changes} == {"main", "echo"}
    async with http.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    assert 'kascade_learned_threshold{policy="default",task="*",variant="echo"} 0.05' in text


def _fitted_and_learned(entry: dict[str, Any] | None) -> bool:
    """The arm (None before its first request) has a fitted score and a learned threshold."""
    entry = entry or {}
    fitted, learned = entry.get("fittedScore") or {}, (entry.get("tasks") or {}).get("*") or {}
    return bool(fitted.get("fittedOn")) and (learned.get("threshold") or 1.0) < 1.0


async def test_a_combined_policy_fits_its_own_score_and_learns_a_threshold_for_it(
    start_sim, start_gateway, http
) -> None:
    pool = await start_sim(name="pool", confidence=0.5, answer="42")
    expert = await start_sim(name="e1")
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(expert.url)},
            policy={
                "confidence": {
                    "method": "combined",  # no weights: the mean token prob until a fit
                    "threshold": 0.0,
                    "target": {**TARGET, "windowLabels": 5000, "fitScore": True},
                }
            },
        )
    )
    rng = random.Random(21)

    async def send(n: int) -> list[tuple[bool, bool]]:
        out = []
        for _ in range(n):
            signals, right = quality_support.scripted_signals(rng)
            pool.set(confidence_signals=signals)
            headers = await _ask(http, gw.url, f"The answer is {42 if right else 7}.")
            out.append((headers["x-kascade-route"] == "local", right))
        await _settled(gw)
        return out

    # Labels until the arm has a fitted score and a threshold learned under it: how many
    # that takes depends on the random FIT/CALIBRATE split (half the labels calibrate,
    # and the bound needs enough of them above a threshold), so it is polled, bounded.
    sent = 0
    while not _fitted_and_learned((await _status(http, gw.url))["quality"].get("default")):
        assert sent < 2000, "no fitted score with a learned threshold after 2000 requests"
        await send(50)
        sent += 50
    outcomes = await send(300)
    sent += 300
    entry = (await _status(http, gw.url))["quality"]["default"]
    fitted, learned = entry["fittedScore"], entry["tasks"]["*"]
    # Every label went to exactly one stream; about half fitted the model.
    assert fitted["labels"] + learned["labels"] == sent
    assert 0.4 * sent <= fitted["labels"] <= 0.6 * sent
    assert fitted["fittedOn"] >= fitted["labels"] - 10  # refitted as labels came
    assert next(iter(fitted["weights"])) == "log_min_token_prob"  # the signal that decides
    assert fitted["weights"]["log_min_token_prob"] > 0
    assert fitted["fittedAt"]
    # The threshold learned on the other half holds the target for the fitted score, on
    # fresh requests scored by the fitted model.
    assert learned["localErrorUpperBound"] <= TARGET["maxLocalErrorRate"]
    kept = [right for local, right in outcomes if local]
    assert len(kept) >= 50  # the mean token prob (noise) could keep none at this target
    assert 1 - sum(kept) / len(kept) <= TARGET["maxLocalErrorRate"]
    audit = gw.audit()
    refits = [line for line in audit if line["type"] == "score"]
    assert refits
    assert refits[-1]["labels"] == fitted["fittedOn"]
    requests = [line for line in audit if line["type"] == "request"]
    assert requests[-1]["threshold_learned"]
    assert requests[-1]["method"] == "combined"


async def _rate(http: aiohttp.ClientSession, url: str, request_id: str, rating: str) -> Any:
    async with http.post(
        f"{url}/v1/kascade/feedback", json={"request_id": request_id, "rating": rating}
    ) as resp:
        assert resp.status == 200
        return await resp.json()


@pytest.mark.parametrize("feedback_labels", [True, False])
async def test_user_ratings_of_kept_answers_move_the_threshold_only_when_opted_in(
    start_sim, start_gateway, http, feedback_labels: bool
) -> None:
    pool = await start_sim(name="pool", confidence=0.5, answer="42")
    expert = await start_sim(name="e1")
    # No shadow labels (shadowFraction 0): only the users' ratings can label.
    target = {**TARGET, "shadowFraction": 0.0, "feedbackLabels": feedback_labels}
    gw = await start_gateway(
        gateway_config(
            pool=pool.url,
            experts={"e1": expert_config(expert.url)},
            policy={"confidence": {"threshold": 0.7, "target": target}},
        )
    )
    rng = random.Random(5)
    sent = []
    for _ in range(120):  # all kept local: the policy's 0.7 holds until labels exist
        score = round(rng.uniform(0.8, 1.0), 3)
        headers = await _ask(http, gw.url, _prompt(score, True))
        assert headers["x-kascade-route"] == "local"
        sent.append((headers["x-kascade-request-id"], score))
    # Users rate answers scoring in [0.8, 0.9) down, those in [0.9, 1] up.
    answers = [await _rate(http, gw.url, rid, "down" if s < 0.9 else "up") for rid, s in sent]
    assert [a["labelled"] for a in answers] == [feedback_labels] * len(sent)
    again = await _rate(http, gw.url, sent[0][0], "up")
    assert again["labelled"] is False
    assert again["reason"] == ("already_labelled" if feedback_labels else "unknown")
    figures = (await _status(http, gw.url))["quality"]["default"]
    if not feedback_labels:
        assert "feedbackLabels" not in figures
        assert figures["tasks"].get("*") is None  # not one label
        return
    assert figures["feedbackLabels"] == len(sent)
    assert figures["tasks"]["*"]["labels"] == len(sent)
    assert figures["tasks"]["*"]["threshold"] > 0.85
    last = [line for line in gw.audit() if line["type"] == "feedback"][-2]
    assert last["labelled"] is True
    assert "variant" in last


@pytest.mark.redis
@pytest.mark.parametrize("variants", [False, True], ids=["one-arm", "two-variants"])
async def test_a_rating_labels_the_answer_whichever_replica_it_reaches(
    redis_url: str, start_sim, start_gateway, http, variants: bool
) -> None:
    """Behind a Service a rating seldom reaches the replica that answered: two gateways
    on one Redis, every answer given by one and rated on the other (which has not
    served the policy yet), each labelled once in all, on the arm that answered."""
    pool = await start_sim(name="pool", confidence=0.5, answer="42")
    expert = await start_sim(name="e1")
    target = {**TARGET, "shadowFraction": 0.0, "feedbackLabels": True}
    policy: dict[str, Any] = {"confidence": {"threshold": 0.7, "target": target}}
    if variants:
        policy["variants"] = [{"name": "main", "weight": 1}, {"name": "alt", "weight": 1}]
    config = gateway_config(
        pool=pool.url,
        experts={"e1": expert_config(expert.url)},
        policy=policy,
        ledger={"url": redis_url},
    )
    answering, rating = [await start_gateway(config, name=name) for name in ("gw-a", "gw-b")]
    rng = random.Random(5)
    sent, served = [], collections.Counter[str]()
    for n in range(120):  # all kept local: the policy's 0.7 holds until labels exist
        score = round(rng.uniform(0.8, 1.0), 3)
        headers = await _ask(http, answering.url, _prompt(score, True), user=f"caller-{n}")
        assert headers["x-kascade-route"] == "local"
        served[headers.get("x-kascade-variant", "")] += 1
        sent.append((headers["x-kascade-request-id"], score))
    for rid, score in sent:
        rated = await _rate(http, rating.url, rid, "down" if score < 0.9 else "up")
        assert rated["labelled"] is True, rated.get("reason")
        assert (rated["variant"] or "") in served
        again = await _rate(http, answering.url, rid, "up")
        assert again == {**again, "labelled": False, "reason": "already_labelled"}
    entry = (await _status(http, rating.url))["quality"]["default"]
    arms = entry["variants"] if variants else {"": entry}
    assert {name: figures["feedbackLabels"] for name, figures in arms.items()} == served
    assert {name: figures["tasks"]["*"]["labels"] for name, figures in arms.items()} == served
    assert len(served) == (2 if variants else 1)
