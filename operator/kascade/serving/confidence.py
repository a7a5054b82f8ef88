"""Confidence: per-token probabilities of a completion folded into one figure in [0, 1].

Each generated token contributes one :class:`TokenScore`, taken from the model's raw
distribution at that step: ``softmax(logits)`` at temperature 1, before any sampling
transform (temperature, top-p). So the figure describes the model, not the sampler,
and is the same whatever temperature the caller asked for.

- ``mean-token-prob``: arithmetic mean over steps of p(generated token).
- ``min-token-prob``: minimum over steps of p(generated token).
- ``margin``: arithmetic mean over steps of p(top-1) - p(top-2), the two most likely
  tokens at that step (whatever token was generated).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from kascade.serving import config

__all__ = ["ConfidenceAccumulator", "TokenScore", "aggregate", "score_logits"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TokenScore:
    """Probabilities at one generation step, from the raw (temperature 1) softmax."""

    prob: float
    """p(generated token)."""

    top1: float
    """Largest probability at this step."""

    top2: float
    """Second largest probability at this step."""


def score_logits(*, logits: npt.NDArray[np.float32], token: int) -> TokenScore:
    """Scores one step from its logits row (one row only: the cost is O(vocab)).

    Works on logits, not sorted probabilities: softmax is monotone, so the top two
    tokens are the two largest logits, found with argmax and two slice maxima
    (``np.partition`` over a 50k vocabulary costs ~15x more). The normaliser is a
    float32 exp of max-shifted logits (all <= 0, so no overflow), summed in float64.
    """
    row = np.asarray(logits, dtype=np.float32)
    best = int(np.argmax(row))
    top = float(row[best])
    runner_up = max(
        float(row[:best].max()) if best > 0 else -math.inf,
        float(row[best + 1 :].max()) if best + 1 < row.shape[0] else -math.inf,
    )
    total = float(np.exp(row - top).sum(dtype=np.float64))
    return TokenScore(
        prob=math.exp(float(row[token]) - top) / total,
        top1=1.0 / total,
        top2=math.exp(runner_up - top) / total,
    )


def aggregate(*, scores: Sequence[TokenScore], method: config.ConfidenceMethod) -> float:
    """Folds token scores into one confidence figure in [0, 1] per ``method``.

    Raises ValueError for an empty sequence: a completion always scores at least the
    token that ended it.
    """
    if not scores:
        raise ValueError("confidence needs at least one scored token")
    acc = ConfidenceAccumulator()
    for score in scores:
        acc.add(score)
    return acc.value(method=method)


class ConfidenceAccumulator:
    """Running sums, so a stream can report confidence on its last chunk in O(1) memory."""

    __slots__ = ("_count", "_margin_sum", "_min_prob", "_prob_sum")

    def __init__(self) -> None:
        self._count = 0
        self._prob_sum = 0.0
        self._min_prob = math.inf
        self._margin_sum = 0.0

    @property
    def count(self) -> int:
        """Number of scored tokens so far."""
        return self._count

    def add(self, score: TokenScore) -> None:
        """Adds one step's score."""
        self._count += 1
        self._prob_sum += score.prob
        self._min_prob = min(self._min_prob, score.prob)
        self._margin_sum += score.top1 - score.top2

    def value(self, *, method: config.ConfidenceMethod) -> float:
        """The confidence figure, clamped to [0, 1] against float rounding."""
        if self._count == 0:
            raise ValueError("confidence needs at least one scored token")
        if method is config.ConfidenceMethod.MEAN_TOKEN_PROB:
            raw = self._prob_sum / self._count
        elif method is config.ConfidenceMethod.MIN_TOKEN_PROB:
            raw = self._min_prob
        else:
            raw = self._margin_sum / self._count
        return min(1.0, max(0.0, raw))
