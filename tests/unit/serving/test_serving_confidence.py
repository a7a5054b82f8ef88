"""Confidence math: per-step scores from logits, and the three aggregation methods."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kascade.serving import confidence, config

M = config.ConfidenceMethod


def test_score_logits_is_the_raw_softmax() -> None:
    logits = np.array([2.0, 1.0, 0.0, -1.0], dtype=np.float32)
    exp = np.exp(logits.astype(np.float64))
    probs = exp / exp.sum()
    score = confidence.score_logits(logits=logits, token=1)
    assert score.prob == pytest.approx(probs[1])
    assert score.top1 == pytest.approx(probs[0])
    assert score.top2 == pytest.approx(probs[1])


def test_score_logits_is_stable_for_large_logits() -> None:
    logits = np.array([1000.0, 999.0, -1000.0], dtype=np.float32)
    score = confidence.score_logits(logits=logits, token=0)
    assert score.prob == pytest.approx(1 / (1 + math.exp(-1)))
    assert score.top1 - score.top2 == pytest.approx((1 - math.exp(-1)) / (1 + math.exp(-1)))


def test_uniform_logits_give_equal_top_two() -> None:
    score = confidence.score_logits(logits=np.zeros(50_000, dtype=np.float32), token=7)
    assert score.prob == pytest.approx(1 / 50_000)
    assert score.top1 == score.top2


SCORES = [
    confidence.TokenScore(prob=0.9, top1=0.9, top2=0.05),
    confidence.TokenScore(prob=0.2, top1=0.5, top2=0.2),  # sampled the runner-up
    confidence.TokenScore(prob=0.7, top1=0.7, top2=0.3),
]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (M.MEAN_TOKEN_PROB, (0.9 + 0.2 + 0.7) / 3),
        (M.MIN_TOKEN_PROB, 0.2),
        (M.MARGIN, ((0.9 - 0.05) + (0.5 - 0.2) + (0.7 - 0.3)) / 3),
    ],
)
def test_aggregate_methods(method: config.ConfidenceMethod, expected: float) -> None:
    assert confidence.aggregate(scores=SCORES, method=method) == pytest.approx(expected)


def test_empty_completion_has_no_confidence() -> None:
    with pytest.raises(ValueError, match="at least one scored token"):
        confidence.aggregate(scores=[], method=M.MEAN_TOKEN_PROB)


def test_accumulator_matches_aggregate_and_counts() -> None:
    acc = confidence.ConfidenceAccumulator()
    for s in SCORES:
        acc.add(s)
    assert acc.count == 3
    for method in M:
        assert acc.value(method=method) == confidence.aggregate(scores=SCORES, method=method)


def test_values_are_clamped_to_unit_interval() -> None:
    over = [confidence.TokenScore(prob=1.0000000002, top1=1.0000000002, top2=0.0)]
    for method in M:
        assert confidence.aggregate(scores=over, method=method) == 1.0
