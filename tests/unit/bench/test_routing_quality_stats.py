"""The routing-quality bench's statistics, against brute force on small inputs."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from bench import routing_quality as rq


def _pairs_auroc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_equals_the_pairwise_count_with_ties_as_half() -> None:
    rng = random.Random(1)
    for _ in range(20):
        scores = [round(rng.random(), 1) for _ in range(30)]  # many ties
        labels = [rng.random() < 0.4 for _ in range(30)]
        if 0 < sum(labels) < 30:
            got = rq.auroc(scores=np.array(scores), labels=np.array(labels, dtype=float))
            assert got == pytest.approx(_pairs_auroc(scores, [int(y) for y in labels]))
    assert rq.auroc(scores=np.array([0.1, 0.2]), labels=np.array([1.0, 1.0])) is None


def test_reference_routers() -> None:
    # 25% right: a perfect router keeps those plus 10% of all as wrong ones.
    labels = np.array([1.0] * 25 + [0.0] * 75)
    assert rq.perfect_share(labels=labels, target=0.9) == pytest.approx(0.35)
    assert rq.random_share(accuracy=0.25, target=0.9) == pytest.approx(0.1 / 0.75)
    assert rq.random_share(accuracy=0.95, target=0.9) == 1.0


def test_threshold_choice_and_coverage_curve() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    labels = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    # Keeping the top 4 costs one wrong answer in 10: 90% overall.
    assert rq.choose_threshold(scores=scores, labels=labels, target=0.9) == 0.6
    assert rq.choose_threshold(scores=scores, labels=labels, target=0.95) == 0.8
    share, accuracy = rq.coverage_curve(scores=scores, labels=labels)
    assert share[4] == pytest.approx(0.4)
    assert accuracy[4] == pytest.approx(0.9)
    assert accuracy[-1] == pytest.approx(0.3)


def test_wilson_interval_brackets_the_rate() -> None:
    low, high = rq.wilson(successes=169, n=676)
    assert low < 0.25 < high
    assert (round(low, 4), round(high, 4)) == (0.2188, 0.284)


def test_logistic_fit_recovers_a_known_model() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4000, 2))
    p = 1 / (1 + np.exp(-(0.5 + 2.0 * x[:, 0] - 1.0 * x[:, 1])))
    y = (rng.random(4000) < p).astype(float)
    weights, intercept = rq.fit_logistic(x=x, y=y, l2=0.01)
    assert weights == pytest.approx([2.0, -1.0], abs=0.2)
    assert intercept == pytest.approx(0.5, abs=0.15)


def test_variants_parse_and_each_is_scored_on_the_same_items() -> None:
    variants = rq.parse_variants("low=mean-token-prob@0.3,high=mean-token-prob@0.8,fit=combined")
    assert variants == [
        ("low", "mean-token-prob", 0.3),
        ("high", "mean-token-prob", 0.8),
        ("fit", "combined", None),
    ]
    labels = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    scores = {
        "mean-token-prob": np.array([0.9, 0.85, 0.5, 0.2, 0.4, 0.35, 0.95, 0.1]),
        "combined": np.array([0.9, 0.85, 0.5, 0.2, 0.4, 0.35, 0.95, 0.1]),
    }
    half = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    out = rq.variant_report(variants=variants, scores=scores, labels=labels, half=half)
    # Threshold 0.3 keeps 6 of 8 (4 right, 2 wrong): overall 6/8 right.
    assert out["low"]["local_share"] == 6 / 8
    assert out["low"]["local_accuracy"] == 4 / 6
    assert out["low"]["overall_accuracy"] == 6 / 8
    # Threshold 0.8 keeps the 3 right answers that score above it, and nothing wrong.
    assert out["high"]["local_share"] == 3 / 8
    assert out["high"]["overall_accuracy"] == 1.0
    assert out["fit"]["threshold"] == "auto-90"


@pytest.mark.parametrize("text", ["a=nope@0.5", "=mean-token-prob", "a=margin,a=margin@0.2"])
def test_bad_variants_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--variants"):
        rq.parse_variants(text)


def test_a_declared_target_keeps_only_what_its_bound_certifies() -> None:
    """target_report runs the gateway's Learn-then-Test choice on one half and measures
    the other: on a score that tells right (>= 0.7, 97% right) from wrong (< 0.7, 10%
    right), a 20% target keeps the high scores at a true error under 20%; labels that
    are all wrong keep nothing, whatever the score."""
    rng = np.random.default_rng(3)
    n = 4000
    scores = rng.uniform(0.0, 1.0, size=n)
    right = np.where(scores >= 0.7, rng.random(n) < 0.97, rng.random(n) < 0.10)
    half = np.arange(n) % 2
    both = {rq.DEFAULT_METHOD: scores, rq.COMBINED: scores}
    got = rq.target_report(scores=both, labels=right.astype(float), half=half)
    at20 = got[f"{rq.DEFAULT_METHOD}@0.2"]
    assert 0.25 <= at20["local_share"] <= 0.45
    assert at20["local_error"] is not None
    assert at20["local_error"] <= 0.2
    none = rq.target_report(scores=both, labels=np.zeros(n), half=half)
    assert all(v["local_share"] == 0.0 and v["local_error"] is None for v in none.values())
