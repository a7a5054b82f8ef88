"""Kept answers shared through a real redis-server: a rating labels the answer whichever
replica it reaches, and one label per request holds across replicas however an
expert's label and ratings race."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
import redis
from tests.testkit import free_port

from kascade.gateway import config as config_mod
from kascade.gateway.observe import audit as audit_mod
from kascade.gateway.observe import metrics as metrics_mod
from kascade.gateway.route import kept_answers, kept_answers_shared, shadow

pytestmark = pytest.mark.redis

TARGET = config_mod.TargetConfig(
    max_local_error_rate=0.1, window_labels=10_000, min_labels=50, feedback_labels=True
)
ME = "tenant:team-a"
PREFIX = "kascade:test:"


class _Replica:
    """One gateway replica's learning state on the shared store."""

    def __init__(self, url: str, tmp_path: Path, name: str) -> None:
        self.store = kept_answers_shared.SharedKeptAnswers(url=url, key_prefix=PREFIX)
        self.quality = shadow.Quality(kept=self.store)
        self.arm = self.quality.policy(name="chat", target=TARGET)
        self.metrics = metrics_mod.Metrics()
        self.audit = audit_mod.AuditLog(path=str(tmp_path / f"{name}.jsonl"))

    async def keep(self, rid: str, score: float, *, caller: str = ME) -> None:
        kept = kept_answers.Kept(
            policy="chat", variant=None, arm=self.arm.identity, task=None, score=score,
            values=None, caller=caller,
        )  # fmt: skip
        await self.store.remember(rid, kept)

    async def rate(self, rid: str, rating: str, *, caller: str = ME) -> tuple[Any, str | None]:
        return await shadow.label_from_rating(
            quality=self.quality, request_id=rid, rating=rating, caller=caller,
            metrics=self.metrics, audit=self.audit,
        )  # fmt: skip

    async def expert_label(self, rid: str, score: float) -> None:
        await shadow.label(
            quality=self.arm, task=None, score=score, local_text="42", expert_text="42",
            metrics=self.metrics, audit=self.audit, request_id=rid,
        )  # fmt: skip

    def labels(self) -> int:
        return int(self.arm.calibrator.status().get("*", {}).get("labels") or 0)


async def test_a_rating_reaching_another_replica_labels_the_answer(
    redis_url: str, tmp_path: Path
) -> None:
    a, b = _Replica(redis_url, tmp_path, "a"), _Replica(redis_url, tmp_path, "b")
    try:
        await a.keep("answered-by-a", 0.93)
        assert await b.rate("answered-by-a", "negative") == (b.arm, None)
        assert b.labels() == 1
        assert b.arm.feedback_labels == 1
        # Once across replicas: neither a second rating nor an expert label on the
        # replica that answered adds another.
        assert await a.rate("answered-by-a", "positive") == (None, "already_labelled")
        await a.expert_label("answered-by-a", 0.93)
        assert a.labels() == 0
        # Another caller, or an id never kept, reads as unknown on every replica.
        await a.keep("asked-by-b-team", 0.9, caller="tenant:team-b")
        assert await b.rate("asked-by-b-team", "negative") == (None, "unknown")
        assert await b.rate("never-kept-1", "negative") == (None, "unknown")
    finally:
        await a.quality.close()
        await b.quality.close()


async def test_one_label_per_request_when_expert_labels_and_ratings_race(
    redis_url: str, tmp_path: Path
) -> None:
    """Every request is labelled exactly once in total: the replica that answered
    labels it by the expert while its user rates it, at once, on one or both other
    replicas (a double click through a load balancer)."""
    replicas = [_Replica(redis_url, tmp_path, name) for name in "abc"]
    rng = random.Random(3)
    try:
        rids = [f"request-{n:04d}" for n in range(300)]
        for n, rid in enumerate(rids):
            await replicas[n % 3].keep(rid, 0.9)
        racers = []
        for n, rid in enumerate(rids):
            others = [r for i, r in enumerate(replicas) if i != n % 3]
            racers.append(replicas[n % 3].expert_label(rid, 0.9))
            racers += [r.rate(rid, "positive") for r in rng.sample(others, rng.choice((1, 2)))]
        rng.shuffle(racers)
        # Ten requests' worth of racers at a time: all of them at once (750 coroutines)
        # overruns the 0.25 s Redis timeout, which is the next test's subject.
        for start in range(0, len(racers), 25):
            await asyncio.gather(*racers[start : start + 25])
        by_rating = sum(r.arm.feedback_labels for r in replicas)
        assert sum(r.labels() for r in replicas) == len(rids)
        # Both kinds won some races (else the test shows nothing about the claim).
        assert 0 < by_rating < len(rids)
    finally:
        for r in replicas:
            await r.quality.close()


async def test_records_expire_with_the_age_limit_and_keys_hold_no_request_id(
    redis_url: str, tmp_path: Path
) -> None:
    a = _Replica(redis_url, tmp_path, "a")
    try:
        await a.keep("request-with-a-readable-id", 0.9)
        await a.rate("request-with-a-readable-id", "positive")
        client = redis.Redis.from_url(redis_url)
        found = [key.decode() for key in client.scan_iter(f"{PREFIX}kept:*")]
        assert len(found) == 2  # the record and its claim
        for key in found:
            assert "readable" not in key
            assert 0 < client.ttl(key) <= kept_answers.MAX_AGE_S
        client.close()
    finally:
        await a.quality.close()


async def test_a_changed_target_on_the_rating_replica_labels_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    """Replicas mid-rollout: an answer judged for the old target is not a label of the
    new one, whichever replica holds which."""
    a, b = _Replica(redis_url, tmp_path, "a"), _Replica(redis_url, tmp_path, "b")
    try:
        await a.keep("old-target", 0.9)
        b.quality.policy(name="chat", target=TARGET.model_copy(update={"min_labels": 60}))
        assert await b.rate("old-target", "negative") == (None, "unknown")
        assert await a.rate("old-target", "negative") == (a.arm, None)
    finally:
        await a.quality.close()
        await b.quality.close()


async def test_redis_down_nothing_is_labelled(tmp_path: Path) -> None:
    """A claim that failed may have been taken: neither a rating nor an expert's label
    counts while the store cannot be reached (never twice; a random loss is unbiased)."""
    down = _Replica(f"redis://127.0.0.1:{free_port()}/0", tmp_path, "down")
    try:
        await down.keep("lost", 0.9)  # logged, not raised: the answer still returns
        assert await down.rate("lost", "negative") == (None, "unavailable")
        await down.expert_label("lost", 0.9)
        assert down.labels() == 0
    finally:
        await down.quality.close()
