"""User ratings as labels of a quality target (``confidence.target.feedbackLabels``):
the memory of kept answers is bounded in size and age, a rating maps to right, wrong or
nothing, each request is labelled once (the first of a rating and an expert's label),
only its own caller's rating labels it, and rating labels move the learned threshold."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from kascade.gateway import config as config_mod
from kascade.gateway.observe import audit as audit_mod
from kascade.gateway.observe import metrics as metrics_mod
from kascade.gateway.route import kept_answers, shadow
from kascade.gateway.tenants import access

TARGET = config_mod.TargetConfig(
    max_local_error_rate=0.1, window_labels=1000, min_labels=50, feedback_labels=True
)
ME = "tenant:team-a"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _setup(
    tmp_path: Path, *, capacity: int = 100, clock: _Clock | None = None
) -> tuple[shadow.Quality, shadow.PolicyQuality, tuple[Any, Any]]:
    kept = kept_answers.KeptAnswers(capacity=capacity, max_age_s=3600.0, clock=clock or _Clock())
    quality = shadow.Quality(kept=kept)
    arm = quality.policy(name="chat", target=TARGET)
    sinks = (metrics_mod.Metrics(), audit_mod.AuditLog(path=str(tmp_path / "audit.jsonl")))
    return quality, arm, sinks


def _memory(quality: shadow.Quality) -> kept_answers.KeptAnswers:
    assert isinstance(quality.kept, kept_answers.KeptAnswers)
    return quality.kept


async def _keep(quality: shadow.Quality, arm: shadow.PolicyQuality, rid: str, score: float) -> None:
    kept = kept_answers.Kept(
        policy=arm.policy, variant=arm.variant, arm=arm.identity, task=None, score=score,
        values=None, caller=ME,
    )  # fmt: skip
    await quality.kept.remember(rid, kept)


async def _rate(
    quality: shadow.Quality,
    sinks: tuple[Any, Any],
    rid: str,
    rating: str,
    caller: str = ME,
    policy: str | None = None,
) -> tuple[shadow.PolicyQuality | None, str | None]:
    return await shadow.label_from_rating(
        quality=quality,
        request_id=rid,
        rating=rating,
        caller=caller,
        metrics=sinks[0],
        audit=sinks[1],
        policy=policy,
    )


def _labels(arm: shadow.PolicyQuality) -> int:
    return int(arm.calibrator.status().get("*", {}).get("labels") or 0)


async def test_the_memory_keeps_only_the_last_n_requests(tmp_path: Path) -> None:
    quality, arm, sinks = _setup(tmp_path, capacity=3)
    for n in range(4):
        await _keep(quality, arm, f"request-{n}", 0.9)
    assert len(_memory(quality)) == 3
    assert await _rate(quality, sinks, "request-0", "positive") == (None, "unknown")
    assert await _rate(quality, sinks, "request-1", "positive") == (arm, None)


async def test_an_expired_request_is_not_labelled(tmp_path: Path) -> None:
    clock = _Clock()
    quality, arm, sinks = _setup(tmp_path, clock=clock)
    await _keep(quality, arm, "request-old", 0.9)
    clock.now += 1800
    await _keep(quality, arm, "request-new", 0.9)
    clock.now += 1801  # the first is now 3601 s old, the second 1801 s
    assert await _rate(quality, sinks, "request-old", "negative") == (None, "unknown")
    assert await _rate(quality, sinks, "request-new", "negative") == (arm, None)
    assert len(_memory(quality)) == 1


def test_ratings_map_to_right_wrong_or_nothing() -> None:
    assert kept_answers.rating_label("positive") is True
    assert kept_answers.rating_label("negative") is False
    assert kept_answers.rating_label("neutral") is None


async def test_a_neutral_rating_labels_nothing(tmp_path: Path) -> None:
    quality, arm, sinks = _setup(tmp_path)
    await _keep(quality, arm, "request-1", 0.9)
    assert await _rate(quality, sinks, "request-1", "neutral") == (None, "neutral")
    assert _labels(arm) == 0
    assert await _rate(quality, sinks, "request-1", "positive") == (arm, None)
    assert _labels(arm) == 1


async def test_one_label_per_request_whichever_comes_first(tmp_path: Path) -> None:
    quality, arm, sinks = _setup(tmp_path)
    await _keep(quality, arm, "rated-twice", 0.9)
    assert await _rate(quality, sinks, "rated-twice", "negative") == (arm, None)
    assert await _rate(quality, sinks, "rated-twice", "negative") == (None, "already_labelled")
    # A shadow label that arrives after the rating adds nothing...
    await shadow.label(
        quality=arm, task=None, score=0.9, local_text="42", expert_text="42",
        metrics=sinks[0], audit=sinks[1], request_id="rated-twice",
    )  # fmt: skip
    assert _labels(arm) == 1
    assert arm.feedback_labels == 1
    # ...and a rating after a shadow label adds nothing either.
    await _keep(quality, arm, "shadowed", 0.9)
    await shadow.label(
        quality=arm, task=None, score=0.9, local_text="42", expert_text="42",
        metrics=sinks[0], audit=sinks[1], request_id="shadowed",
    )  # fmt: skip
    assert _labels(arm) == 2
    assert await _rate(quality, sinks, "shadowed", "negative") == (None, "already_labelled")
    assert _labels(arm) == 2


async def test_only_the_caller_that_asked_labels_its_request(tmp_path: Path) -> None:
    quality, arm, sinks = _setup(tmp_path)
    await _keep(quality, arm, "request-1", 0.9)
    assert await _rate(quality, sinks, "request-1", "negative", caller="tenant:team-b") == (
        None,
        "unknown",
    )
    assert await _rate(quality, sinks, "request-1", "negative", caller=access.ANONYMOUS) == (
        None,
        "unknown",
    )
    assert _labels(arm) == 0
    assert await _rate(quality, sinks, "request-1", "negative") == (arm, None)


async def test_a_rating_that_names_another_policy_labels_nothing(tmp_path: Path) -> None:
    quality, arm, sinks = _setup(tmp_path)
    await _keep(quality, arm, "request-1", 0.9)
    assert await _rate(quality, sinks, "request-1", "negative", policy="other") == (None, "unknown")
    assert _labels(arm) == 0
    assert await _rate(quality, sinks, "request-1", "negative", policy="chat") == (arm, None)


async def test_a_changed_target_drops_what_was_kept_for_the_old_one(tmp_path: Path) -> None:
    quality, arm, sinks = _setup(tmp_path)
    await _keep(quality, arm, "request-1", 0.9)
    quality.policy(name="chat", target=TARGET.model_copy(update={"min_labels": 60}))
    assert await _rate(quality, sinks, "request-1", "negative") == (None, "unknown")


def test_caller_identity_never_holds_the_key() -> None:
    anonymous = access.Caller(tenant=None, authenticated=False)
    flat = access.Caller(tenant=None, authenticated=True)
    assert kept_answers.caller_identity(anonymous, None) == access.ANONYMOUS
    one = kept_answers.caller_identity(flat, "secret-key-one")
    assert "secret-key-one" not in one
    assert one != kept_answers.caller_identity(flat, "secret-key-two")


async def test_negative_ratings_of_high_scores_raise_the_learned_threshold(tmp_path: Path) -> None:
    quality, arm, sinks = _setup(tmp_path, capacity=1000)
    rng = random.Random(7)
    # Answers scoring in [0.8, 0.9) are rated down, those in [0.9, 1] up.
    for n in range(200):
        score = rng.uniform(0.8, 1.0)
        await _keep(quality, arm, f"request-{n}", score)
        await _rate(quality, sinks, f"request-{n}", "negative" if score < 0.9 else "positive")
    learned = arm.calibrator.threshold(task=None)
    assert learned is not None
    assert learned > 0.85
    assert arm.feedback_labels == 200
    assert quality.status()["chat"]["feedbackLabels"] == 200
    text = sinks[0].render().decode()
    assert 'kascade_feedback_labels_total{label="wrong",policy="chat",variant=""}' in text
