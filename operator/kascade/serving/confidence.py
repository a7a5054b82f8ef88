"""Confidence: per-token probabilities of a completion folded into one figure in [0, 1].

Each generated token contributes one :class:`TokenScore`, taken from the model's raw
distribution at that step: ``softmax(logits)`` at temperature 1, before any sampling
transform (temperature, top-p). So the figure describes the model, not the sampler,
and is the same whatever temperature the caller asked for.

- ``mean-token-prob``: arithmetic mean over steps of p(generated token).
- ``min-token-prob``: minimum over steps of p(generated token).
- ``margin``: arithmetic mean over steps of p(top-1) - p(top-2), the two most likely
  tokens at that step (whatever token was generated).
- ``sequence-prob``: the probability of the whole completion, exp(sum of log p) — the
  sequence log-prob mapped into [0, 1]. It falls with length, which on short answers
  is part of what it measures: a model that rambles is less sure.
- ``token-prob-q10``: the 10th percentile of p(generated token) over steps (lower
  interpolation), a softer minimum that one odd token does not decide.

:meth:`ConfidenceAccumulator.signals` gives every figure above and a few more token
quantiles at once; the gateway's combined score (a calibrated model whose weights are
configuration) reads them from the response's ``confidence_signals``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from kascade.serving import config

__all__ = ["SIGNAL_NAMES", "ConfidenceAccumulator", "TokenScore", "aggregate", "score_logits"]

SIGNAL_NAMES = (
    "mean_token_prob",
    "min_token_prob",
    "margin",
    "sequence_prob",
    "mean_logprob",
    "token_prob_q05",
    "token_prob_q10",
    "token_prob_q25",
    "token_prob_q50",
    "tokens",
    "novel_token_prob_mean",
    "novel_token_prob_min",
    "first_line_prob_mean",
    "first_line_prob_min",
)
"""Keys of :meth:`ConfidenceAccumulator.signals`, in order."""

_FLOOR = 1e-12
"""Smallest probability taken into a log (a float32 softmax can round to 0)."""


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
    """Per-step probabilities of one completion, so any method or signal can be read.

    Keeps two floats per generated token (bounded by ``max_tokens``): quantiles need
    the whole list, and a few kilobytes per request cost nothing next to the model.
    """

    __slots__ = ("_first_line", "_margins", "_novel", "_probs")

    def __init__(self) -> None:
        self._probs: list[float] = []
        self._margins: list[float] = []
        self._novel: list[float] = []
        self._first_line: list[float] = []

    @property
    def count(self) -> int:
        """Number of scored tokens so far."""
        return len(self._probs)

    def add(self, score: TokenScore, *, novel: bool = True, first_line: bool = True) -> None:
        """Adds one step's score. ``novel``: the token is not in the prompt (copied
        tokens are easy, so the answer's own tokens say more); ``first_line``: it is
        part of the answer's first line (where a short answer is stated)."""
        self._probs.append(score.prob)
        self._margins.append(score.top1 - score.top2)
        if novel:
            self._novel.append(score.prob)
        if first_line:
            self._first_line.append(score.prob)

    def _quantile(self, q: float) -> float:
        ordered = sorted(self._probs)
        return ordered[int(q * (len(ordered) - 1))]

    def value(self, *, method: config.ConfidenceMethod) -> float:
        """The confidence figure, clamped to [0, 1] against float rounding."""
        if not self._probs:
            raise ValueError("confidence needs at least one scored token")
        if method is config.ConfidenceMethod.MEAN_TOKEN_PROB:
            raw = sum(self._probs) / len(self._probs)
        elif method is config.ConfidenceMethod.MIN_TOKEN_PROB:
            raw = min(self._probs)
        elif method is config.ConfidenceMethod.SEQUENCE_PROB:
            raw = math.exp(sum(math.log(max(p, _FLOOR)) for p in self._probs))
        elif method is config.ConfidenceMethod.TOKEN_PROB_Q10:
            raw = self._quantile(0.10)
        else:
            raw = sum(self._margins) / len(self._margins)
        return min(1.0, max(0.0, raw))

    def signals(self) -> dict[str, float]:
        """Every figure the gateway may score with, keyed as :data:`SIGNAL_NAMES`."""
        if not self._probs:
            raise ValueError("confidence needs at least one scored token")
        method = config.ConfidenceMethod
        logs = [math.log(max(p, _FLOOR)) for p in self._probs]
        return {
            "mean_token_prob": self.value(method=method.MEAN_TOKEN_PROB),
            "min_token_prob": self.value(method=method.MIN_TOKEN_PROB),
            "margin": self.value(method=method.MARGIN),
            "sequence_prob": self.value(method=method.SEQUENCE_PROB),
            "mean_logprob": sum(logs) / len(logs),
            "token_prob_q05": self._quantile(0.05),
            "token_prob_q10": self._quantile(0.10),
            "token_prob_q25": self._quantile(0.25),
            "token_prob_q50": self._quantile(0.50),
            "tokens": float(len(self._probs)),
            # Over no such token, the figure of the whole answer stands in.
            "novel_token_prob_mean": _mean(self._novel or self._probs),
            "novel_token_prob_min": min(self._novel or self._probs),
            "first_line_prob_mean": _mean(self._first_line or self._probs),
            "first_line_prob_min": min(self._first_line or self._probs),
        }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
