"""The combined score fitted from a policy's own labels (``confidence.target.fitScore``).

A policy with ``confidence.method: combined`` and a quality target may ask the gateway
to fit the combined score's weights (``route.combined_score``) itself, from the labels
it already collects for the learned threshold (``route.shadow``), instead of weights
fitted offline by ``bench/routing_quality.py``.

**Method.** Each label keeps the request's feature vector. Labels are split into two
disjoint streams by a digest of the request id (about half each, independent of the
answer, its score and when the label arrives): FIT labels go only to this module's
sliding window (``windowLabels``) and the logistic model (``route.logistic``,
L2-regularised, standardised columns) is fitted only on them, every ``every`` FIT
labels once ``minLabels`` exist; CALIBRATE labels go only to the calibrator, which
chooses the threshold by Learn then Test (``route.calibration``) on their scores
under the current model, recomputed from their stored features each time the model
changes. Until a model exists the configured weights (``confidence.combined``), or
without them the pool's mean token probability, score requests.

**Guarantee.** The model is a function of FIT labels only, so given the model the
CALIBRATE labels are as exchangeable with future traffic as they were before any
fit: the threshold chosen on them holds the target with the calibrator's guarantee,
for the model in force. The price: only about half of the labels calibrate, so a
learned threshold needs about twice ``minLabels`` labels.

Feature names are a bounded set: ``combined_score.FEATURE_NAMES`` and ``task:<label>``
for the tasks the target lists (other task labels are dropped from labelled vectors).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from kascade.gateway.route import combined_score, logistic

__all__ = ["Model", "ScoreFitter", "allowed_names", "fit", "for_fitting"]

Labelled = tuple[Mapping[str, float], bool]
"""(feature vector, right) of one label."""

SHOWN_WEIGHTS = 5
"""Weights the status shows (the largest by magnitude): a status stays small."""


def for_fitting(request_id: str) -> bool:
    """Whether the label of ``request_id`` is a FIT label (else a CALIBRATE one): one
    bit of a digest, so the split depends on nothing the label says."""
    return hashlib.sha256(request_id.encode()).digest()[0] & 1 == 1


def allowed_names(tasks: Collection[str]) -> frozenset[str]:
    """Feature names a fitted model may weigh: the fixed ones and the listed tasks."""
    return frozenset(combined_score.FEATURE_NAMES) | {f"task:{task}" for task in tasks}


@dataclasses.dataclass(frozen=True, slots=True)
class Model:
    """A fitted combined score."""

    weights: dict[str, float]
    intercept: float
    labels: int
    """FIT labels it was fitted on."""

    def score(self, values: Mapping[str, float]) -> float:
        """The model's score of one feature vector, in [0, 1]."""
        return combined_score.score(values=values, weights=self.weights, intercept=self.intercept)


def fit(labels: Sequence[Labelled], *, allowed: Collection[str]) -> Model | None:
    """The logistic model on ``labels``, or None when no model can be fitted (one class
    only: the intercept would run off to infinity; or a singular system)."""
    names = sorted({name for values, _ in labels for name in values} & set(allowed))
    y = np.array([1.0 if right else 0.0 for _, right in labels])
    if not names or y.min(initial=1.0) == y.max(initial=0.0):
        return None
    x = np.array([[values.get(name, 0.0) for name in names] for values, _ in labels])
    try:
        weights, intercept = logistic.fit_logistic(x=x, y=y)
    except np.linalg.LinAlgError:
        return None
    if not (math.isfinite(intercept) and bool(np.isfinite(weights).all())):
        return None
    return Model(
        weights={name: float(w) for name, w in zip(names, weights, strict=True)},
        intercept=intercept,
        labels=len(labels),
    )


class ScoreFitter:
    """One arm's FIT labels (a sliding window) and the model fitted on them."""

    def __init__(self, *, window: int, min_labels: int, tasks: Collection[str], every: int = 10):
        self._labels: collections.deque[Labelled] = collections.deque(maxlen=window)
        self._min_labels = min_labels
        self._every = every
        self._since = 0
        self.allowed = allowed_names(tasks)
        self.model: Model | None = None
        self.fitted_at: float | None = None
        self.fitting = False
        """A fit is running (off the event loop); no second one starts meanwhile."""

    def bounded(self, values: Mapping[str, float]) -> dict[str, float]:
        """The vector without task features the target does not list."""
        return {name: value for name, value in values.items() if name in self.allowed}

    def add(self, values: Mapping[str, float], *, right: bool) -> bool:
        """Adds one FIT label; True when a refit is due."""
        self._labels.append((self.bounded(values), right))
        self._since += 1
        if len(self._labels) < self._min_labels or self._since < self._every or self.fitting:
            return False
        self._since = 0
        return True

    def snapshot(self) -> list[Labelled]:
        """The FIT labels now (a copy: a fit in a thread must not see the window move)."""
        return list(self._labels)

    def install(self, model: Model, *, at: float) -> None:
        self.model, self.fitted_at = model, at

    def status(self) -> dict[str, Any]:
        """FIT labels held and, once fitted, the model (its largest weights)."""
        out: dict[str, Any] = {"labels": len(self._labels)}
        if self.model is None:
            return out
        top = sorted(self.model.weights.items(), key=lambda kv: -abs(kv[1]))[:SHOWN_WEIGHTS]
        out.update(
            fittedOn=self.model.labels,
            intercept=round(self.model.intercept, 4),
            weights={name: round(w, 4) for name, w in top},
            fittedAt=None
            if self.fitted_at is None
            else datetime.datetime.fromtimestamp(self.fitted_at, datetime.UTC).isoformat(),
        )
        return out
