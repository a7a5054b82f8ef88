"""A learned confidence threshold that holds a declared local error rate.

A policy declares ``confidence.target.maxLocalErrorRate`` (alpha) and a risk level delta
(``1 - confidence.target.confidenceLevel``). The gateway collects labels — (score,
right/wrong) pairs for local answers, judged against the expert's answer — from a
uniform sample of requests that got a local answer (see ``pipeline``): an escalated
sampled request is labelled for free with the expert answer it already got; a kept one
is labelled by a background *shadow* call to the expert.

**Method (Learn then Test, Angelopoulos et al. 2021, with a Bonferroni family).** For
each threshold t of a fixed grid (0.05, 0.10, ..., 1.00; K = 20), the null hypothesis
H_t says "the error rate among answers scoring >= t is above alpha". With k_t errors
among the n_t labels scoring >= t, H_t is rejected when the one-sided Clopper-Pearson
upper bound of k_t / n_t at level 1 - delta/K is <= alpha. The lowest rejected t is
chosen (none rejected: every answer escalates, threshold 1). The grid does not depend on
the data, so the union bound covers every threshold at once.

**Guarantee.** If the labelled requests and future requests are exchangeable (drawn from
the same traffic), then with probability at least 1 - delta over the labels, the error
rate among future answers kept local at the chosen threshold is at most alpha (the union
bound over the K tests controls the family-wise error). Before ``minLabels`` labels
exist the policy's own threshold applies. Labels live in a sliding window of the last
``windowLabels`` per key, so after a drift in traffic the threshold follows within about
one window. A label is only as good as the expert's answer: the guarantee is relative to
the expert.

Per task: labels are kept per task label (header ``x-kascade-task``, when the target
lists it) as well as for all traffic; a task with ``minLabels`` of its own uses its own threshold.

**A fitted score** (``confidence.target.fitScore``, ``route.score_fit``): the score is
then itself learned from labels. The calibrator only receives CALIBRATE labels, a
half of the labels disjoint from the FIT labels the model is fitted on (split by a
digest of the request id), each with its feature vector; ``rescore`` scores them again
whenever the model changes. Given the model (a function of FIT labels only) the
CALIBRATE labels are exchangeable with future requests, so the guarantee above holds
for the model in force.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import math
from collections.abc import Callable, Mapping

__all__ = [
    "Calibrator",
    "Learned",
    "choose_threshold",
    "clopper_pearson_upper",
]

_GRID = 20
"""Thresholds tested: 0.05, 0.10, ..., 1.00."""


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) <= k), summed in log space (n up to a few thousand)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    log_term = n * log_q  # i = 0
    for i in range(k + 1):
        total += math.exp(log_term)
        log_term += math.log((n - i) / (i + 1)) + log_p - log_q
    return min(1.0, total)


def clopper_pearson_upper(*, errors: int, n: int, delta: float) -> float:
    """One-sided (1 - delta) upper confidence bound of a binomial rate."""
    if n == 0 or errors >= n:
        return 1.0
    lo, hi = errors / n, 1.0
    for _ in range(60):  # bisection to ~1e-18
        mid = (lo + hi) / 2
        if _binom_cdf(errors, n, mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


@dataclasses.dataclass(frozen=True, slots=True)
class Learned:
    """A threshold chosen from labels, with what it rests on."""

    threshold: float
    labels: int
    local_error_estimate: float
    """Observed error rate among labelled answers scoring >= threshold."""
    upper_bound: float
    """Clopper-Pearson upper bound of that rate at the policy's confidence level."""


def choose_threshold(
    *, labels: list[tuple[float, bool]], max_error: float, delta: float
) -> Learned:
    """The lowest grid threshold whose error bound holds (see the module docstring)."""
    ordered = sorted(labels, key=lambda pair: -pair[0])
    negated = [-s for s, _ in ordered]
    wrong_prefix = [0]
    for _, right in ordered:
        wrong_prefix.append(wrong_prefix[-1] + (not right))
    level = delta / _GRID
    chosen = Learned(threshold=1.0, labels=len(labels), local_error_estimate=0.0, upper_bound=0.0)
    for step in range(_GRID, 0, -1):
        t = step / _GRID
        n = bisect.bisect_right(negated, -t)  # labels scoring >= t
        if n == 0:
            continue
        errors = wrong_prefix[n]
        if errors / n > max_error:
            continue  # the bound cannot hold: skip the exact computation
        upper = clopper_pearson_upper(errors=errors, n=n, delta=level)
        if upper <= max_error:
            chosen = Learned(
                threshold=t, labels=len(labels), local_error_estimate=errors / n, upper_bound=upper
            )
    return chosen


@dataclasses.dataclass(slots=True)
class _Label:
    score: float
    """The label's score under the model in force (``rescore`` updates it)."""
    right: bool
    values: Mapping[str, float] | None
    """Its feature vector when the arm fits its score (``route.score_fit``), else None."""


class Calibrator:
    """Sliding windows of labels per key ("" = all traffic) and the learned thresholds."""

    def __init__(
        self, *, max_error: float, delta: float, window: int, min_labels: int, every: int = 10
    ) -> None:
        self._max_error = max_error
        self._delta = delta
        self._min_labels = min_labels
        self._every = every
        self._window = window
        self._labels: dict[str, collections.deque[_Label]] = {}
        self._learned: dict[str, Learned] = {}
        self._since: dict[str, int] = {}

    def add(
        self,
        *,
        score: float,
        right: bool,
        task: str | None,
        values: Mapping[str, float] | None = None,
    ) -> list[tuple[str, Learned]]:
        """Adds one label (to all traffic and to its task); returns each key whose learned
        threshold changed, with the new figures (an Event and an audit line each).
        ``values``: the label's feature vector, kept so ``rescore`` can score it again."""
        changed = []
        label = _Label(score=score, right=right, values=values)  # one object in each window
        for key in ("", task) if task else ("",):
            window = self._labels.setdefault(key, collections.deque(maxlen=self._window))
            window.append(label)
            self._since[key] = self._since.get(key, 0) + 1
            if len(window) < self._min_labels or self._since[key] < self._every:
                continue
            self._since[key] = 0
            if (found := self._choose(key)) is not None:
                changed.append(found)
        return changed

    def rescore(self, score: Callable[[Mapping[str, float]], float]) -> list[tuple[str, Learned]]:
        """Scores every label that kept its feature vector again (the score's model
        changed) and chooses every threshold again; returns those that changed."""
        vectors = self.vectors()
        return self.rescored(vectors, [score(values) for _, values in vectors])

    def vectors(self) -> list[tuple[_Label, Mapping[str, float]]]:
        """Each label that kept its feature vector, once (a task's label is also in the
        all-traffic window), with its vector: what ``rescored`` takes scores of. Scoring
        them may run off the event loop (``shadow``); the list holds the labels."""
        seen: dict[int, tuple[_Label, Mapping[str, float]]] = {}
        for window in self._labels.values():
            for label in window:
                if label.values is not None:
                    seen.setdefault(id(label), (label, label.values))
        return list(seen.values())

    def rescored(
        self, vectors: list[tuple[_Label, Mapping[str, float]]], scores: list[float]
    ) -> list[tuple[str, Learned]]:
        """Gives the labels of ``vectors`` their new ``scores`` and chooses every
        threshold again; returns those that changed. A label that aged out of its
        windows meanwhile is scored but counts nowhere."""
        for (label, _), new in zip(vectors, scores, strict=True):
            label.score = new
        changed = []
        for key, window in self._labels.items():
            if len(window) >= self._min_labels and (found := self._choose(key)) is not None:
                changed.append(found)
        return changed

    def _choose(self, key: str) -> tuple[str, Learned] | None:
        """Chooses the key's threshold on its window; (key, figures) when it moved."""
        window = self._labels[key]
        learned = choose_threshold(
            labels=[(label.score, label.right) for label in window],
            max_error=self._max_error,
            delta=self._delta,
        )
        old = self._learned.get(key)
        self._learned[key] = learned
        return (key, learned) if old is None or old.threshold != learned.threshold else None

    def threshold(self, *, task: str | None) -> float | None:
        """The learned threshold for a request (its task's, else all traffic's), or None
        while too few labels exist."""
        if task and task in self._learned:
            return self._learned[task].threshold
        learned = self._learned.get("")
        return learned.threshold if learned else None

    def status(self) -> dict[str, dict[str, float | int | None]]:
        """Per key: labels held, learned threshold and its error figures."""
        out: dict[str, dict[str, float | int | None]] = {}
        for key, window in sorted(self._labels.items()):
            learned = self._learned.get(key)
            out[key or "*"] = {
                "labels": len(window),
                "threshold": learned.threshold if learned else None,
                "localErrorEstimate": learned.local_error_estimate if learned else None,
                "localErrorUpperBound": learned.upper_bound if learned else None,
            }
        return out
