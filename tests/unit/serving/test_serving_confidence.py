"""Confidence math: per-step scores from logits, the aggregation methods, the signals."""

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
        (M.SEQUENCE_PROB, 0.9 * 0.2 * 0.7),
        (M.TOKEN_PROB_Q10, 0.2),  # lower quantile of three: the smallest
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


def test_token_quantile_ignores_one_odd_token_in_a_long_answer() -> None:
    scores = [confidence.TokenScore(prob=0.9, top1=0.9, top2=0.1)] * 19
    scores = [*scores, confidence.TokenScore(prob=0.01, top1=0.5, top2=0.3)]
    assert confidence.aggregate(scores=scores, method=M.MIN_TOKEN_PROB) == pytest.approx(0.01)
    assert confidence.aggregate(scores=scores, method=M.TOKEN_PROB_Q10) == pytest.approx(0.9)


def test_sequence_prob_falls_with_length_at_equal_token_probs() -> None:
    short = [confidence.TokenScore(prob=0.9, top1=0.9, top2=0.1)] * 2
    long = short * 10
    seq = M.SEQUENCE_PROB
    assert confidence.aggregate(scores=short, method=seq) == pytest.approx(0.81)
    assert confidence.aggregate(scores=long, method=seq) == pytest.approx(0.9**20)


def test_signals_hold_every_method_and_the_token_quantiles() -> None:
    acc = confidence.ConfidenceAccumulator()
    probs = [0.1 * k for k in range(1, 11)]
    for p in probs:
        acc.add(confidence.TokenScore(prob=p, top1=p, top2=0.0))
    signals = acc.signals()
    assert tuple(signals) == confidence.SIGNAL_NAMES
    assert signals["mean_token_prob"] == acc.value(method=M.MEAN_TOKEN_PROB)
    assert signals["sequence_prob"] == acc.value(method=M.SEQUENCE_PROB)
    assert signals["mean_logprob"] == pytest.approx(sum(math.log(p) for p in probs) / 10)
    assert signals["token_prob_q05"] == pytest.approx(0.1)
    assert signals["token_prob_q25"] == pytest.approx(0.3)  # index int(0.25 * 9) = 2
    assert signals["token_prob_q50"] == pytest.approx(0.5)
    assert signals["tokens"] == 10.0


def test_a_zero_probability_token_does_not_break_the_logs() -> None:
    acc = confidence.ConfidenceAccumulator()
    acc.add(confidence.TokenScore(prob=0.0, top1=0.5, top2=0.4))
    assert acc.value(method=M.SEQUENCE_PROB) == pytest.approx(1e-12)
    assert math.isfinite(acc.signals()["mean_logprob"])


def test_novel_and_first_line_signals_keep_only_their_tokens() -> None:
    acc = confidence.ConfidenceAccumulator()
    acc.add(confidence.TokenScore(prob=0.99, top1=0.99, top2=0.0), novel=False)  # copied
    acc.add(confidence.TokenScore(prob=0.3, top1=0.5, top2=0.3))  # the answer
    acc.add(confidence.TokenScore(prob=0.6, top1=0.6, top2=0.1), first_line=False)
    signals = acc.signals()
    assert signals["novel_token_prob_mean"] == pytest.approx((0.3 + 0.6) / 2)
    assert signals["novel_token_prob_min"] == pytest.approx(0.3)
    assert signals["first_line_prob_mean"] == pytest.approx((0.99 + 0.3) / 2)
    assert signals["first_line_prob_min"] == pytest.approx(0.3)


def test_without_novel_tokens_the_whole_answer_stands_in() -> None:
    acc = confidence.ConfidenceAccumulator()
    acc.add(confidence.TokenScore(prob=0.8, top1=0.8, top2=0.1), novel=False)
    acc.add(confidence.TokenScore(prob=0.4, top1=0.4, top2=0.3), novel=False)
    signals = acc.signals()
    assert signals["novel_token_prob_mean"] == signals["mean_token_prob"]
    assert signals["novel_token_prob_min"] == signals["min_token_prob"]
