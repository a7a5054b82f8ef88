"""The combined score fitted from a policy's own labels (confidence.target.fitScore): on a
synthetic stream whose right answers depend on two signals in a known way, the fitted
score separates right from wrong better than the mean token probability, the threshold
learned on CALIBRATE labels holds the error target on fresh traffic, FIT and CALIBRATE
labels never mix, and a refit scores the CALIBRATE labels again."""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kascade.gateway import config as config_mod
from kascade.gateway.observe import audit as audit_mod
from kascade.gateway.observe import metrics as metrics_mod
from kascade.gateway.route import calibration, score_fit, shadow

TARGET = config_mod.TargetConfig(
    max_local_error_rate=0.1,
    confidence_level=0.9,
    window_labels=4000,
    min_labels=50,
    fit_score=True,
)


def _item(rng: random.Random) -> tuple[dict[str, float], bool]:
    """(features, right): right when the least confident token is above e^-1.5 and the
    answer repeats itself little, with 3% of labels flipped. The mean token probability
    follows the minimum only loosely and knows nothing of repetition."""
    log_min = rng.uniform(-3.0, 0.0)
    repetition = rng.uniform(0.0, 1.0)
    log_mean = min(-0.01, 0.25 * log_min + rng.gauss(0.0, 0.35))  # a mean prob below 1
    right = (log_min > -1.5 and repetition < 0.6) != (rng.random() < 0.03)
    values = {
        "log_mean_token_prob": log_mean,
        "log_min_token_prob": log_min,
        "repetition": repetition,
        "log_tokens": math.log1p(rng.randint(1, 40)),
    }
    return values, right


def _mean_prob(values: dict[str, float]) -> float:
    return math.exp(values["log_mean_token_prob"])


def _auroc(scores: list[float], rights: list[bool]) -> float:
    """P(a right answer outscores a wrong one), ties counted half."""
    s, y = np.array(scores), np.array(rights)
    pos, neg = s[y], s[~y]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def _ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(n)]


def test_the_fitted_score_separates_right_from_wrong_better_than_the_mean_prob() -> None:
    rng = random.Random(1)
    train = [_item(rng) for _ in range(600)]
    model = score_fit.fit(train, allowed=score_fit.allowed_names([]))
    assert model is not None
    fresh = [_item(rng) for _ in range(4000)]
    rights = [right for _, right in fresh]
    fitted = _auroc([model.score(v) for v, _ in fresh], rights)
    mean = _auroc([_mean_prob(v) for v, _ in fresh], rights)
    assert fitted >= mean + 0.1, (fitted, mean)
    assert fitted >= 0.8  # a linear model of an AND of two thresholds: not perfect
    # The two signals that decide carry the largest weights, with the right signs.
    assert model.weights["log_min_token_prob"] > 0
    assert model.weights["repetition"] < 0


def test_one_class_or_no_known_feature_fits_no_model() -> None:
    allowed = score_fit.allowed_names([])
    assert score_fit.fit([({"log_min_token_prob": -0.5}, True)] * 60, allowed=allowed) is None
    assert score_fit.fit([({"task:math": 1.0}, True), ({}, False)] * 30, allowed=allowed) is None


def test_the_threshold_learned_on_calibrate_labels_holds_the_target_on_fresh_traffic() -> None:
    rng = random.Random(2)
    stream = [(rid, *_item(rng)) for rid in _ids(3000, seed=3)]
    fit_part = [(v, right) for rid, v, right in stream if score_fit.for_fitting(rid)]
    model = score_fit.fit(fit_part, allowed=score_fit.allowed_names([]))
    assert model is not None
    fitted, mean = _calibrator(), _calibrator()
    for rid, values, right in stream:
        if not score_fit.for_fitting(rid):
            fitted.add(score=model.score(values), right=right, task=None, values=values)
            mean.add(score=_mean_prob(values), right=right, task=None)
    t_fit, t_mean = fitted.threshold(task=None), mean.threshold(task=None)
    assert t_fit is not None
    assert t_mean is not None
    fresh = [_item(rng) for _ in range(50_000)]
    kept = [right for v, right in fresh if model.score(v) >= t_fit]
    assert len(kept) >= 5000
    assert 1 - sum(kept) / len(kept) <= TARGET.max_local_error_rate
    # What the better score buys: more traffic stays local at the same target.
    kept_mean = [right for v, right in fresh if _mean_prob(v) >= t_mean]
    assert len(kept) > 1.5 * len(kept_mean)


def _calibrator() -> calibration.Calibrator:
    return calibration.Calibrator(
        max_error=TARGET.max_local_error_rate,
        delta=1 - TARGET.confidence_level,
        window=TARGET.window_labels,
        min_labels=TARGET.min_labels,
    )


def test_the_split_puts_about_half_of_the_labels_in_each_stream() -> None:
    fits = [score_fit.for_fitting(rid) for rid in _ids(4000, seed=4)]
    assert 0.45 <= sum(fits) / len(fits) <= 0.55
    assert [score_fit.for_fitting(rid) for rid in _ids(50, seed=4)] == fits[:50]  # deterministic


def test_rescore_scores_the_kept_vectors_again_and_moves_the_threshold() -> None:
    cal = _calibrator()
    for i in range(200):
        right = i % 4 != 0  # a quarter wrong: above the 10% target at any score
        cal.add(score=0.9, right=right, task=None, values={"margin": 1.0 if right else 0.0})
    assert cal.threshold(task=None) == 1.0  # no threshold holds: every answer escalates
    changed = cal.rescore(lambda values: 0.2 + 0.7 * values["margin"])
    assert [key for key, _ in changed] == [""]
    assert cal.threshold(task=None) == 0.25  # the lowest above the wrong ones' new 0.2


def test_labels_added_while_the_rescore_runs_keep_their_scores() -> None:
    """The refit scores the held labels off the event loop while new labels (already
    scored by the new model) keep arriving; applying the old labels' scores must not
    touch the new ones, and a label that aged out meanwhile counts nowhere."""
    cal = calibration.Calibrator(
        max_error=TARGET.max_local_error_rate,
        delta=1 - TARGET.confidence_level,
        window=1000,
        min_labels=TARGET.min_labels,
    )
    for i in range(1000):
        right = i % 4 != 0
        cal.add(score=0.9, right=right, task=None, values={"margin": 1.0 if right else 0.0})
    vectors = cal.vectors()
    assert len(vectors) == 1000
    # While the thread scores them: 200 new labels, scored by the new model on arrival
    # (right 0.9, wrong 0.2); the oldest 200 of the snapshot age out of the window.
    for i in range(200):
        right = i % 4 != 0
        cal.add(score=0.9 if right else 0.2, right=right, task=None, values={"margin": 9.0})
    changed = cal.rescored(vectors, [0.2 + 0.7 * values["margin"] for _, values in vectors])
    assert [key for key, _ in changed] == [""]
    assert cal.threshold(task=None) == 0.25
    assert cal.status()["*"]["labels"] == 1000
    # Had the new labels been rescored (margin 9.0 -> 6.5), the wrong among them would
    # score above every right answer, and no threshold could hold the target.
    assert max(label.score for label, _ in cal.vectors()) <= 0.9


def _sinks(tmp_path: Path) -> tuple[metrics_mod.Metrics, audit_mod.AuditLog]:
    return metrics_mod.Metrics(), audit_mod.AuditLog(path=str(tmp_path / "audit.jsonl"))


def _label(arm: shadow.PolicyQuality, rid: str, item: Any, sinks: Any, marker: int) -> None:
    values, right = item
    shadow.add_label(
        quality=arm,
        task=None,
        score=_mean_prob(values),
        right=right,
        metrics=sinks[0],
        audit=sinks[1],
        values={**values, "cut_off": float(marker)},  # which label this is
        request_id=rid,
    )


async def _settled(arm: shadow.PolicyQuality) -> None:
    while arm.tasks:
        await asyncio.gather(*list(arm.tasks))


async def test_an_arm_fits_on_fit_labels_only_and_calibrates_on_the_others(
    tmp_path: Path,
) -> None:
    quality = shadow.Quality()
    arm = quality.policy(name="chat", target=TARGET, combined=True)
    assert arm.fitter is not None
    sinks = _sinks(tmp_path)
    rng = random.Random(5)
    ids = _ids(1200, seed=6)
    for marker, rid in enumerate(ids):
        _label(arm, rid, _item(rng), sinks, marker)
        await _settled(arm)  # each refit lands before the next label (deterministic)
    fit_markers = {int(v["cut_off"]) for v, _ in arm.fitter.snapshot()}
    assert fit_markers == {i for i, rid in enumerate(ids) if score_fit.for_fitting(rid)}
    status = quality.status()["chat"]
    calibrated = status["tasks"]["*"]["labels"]
    assert calibrated + len(fit_markers) == len(ids)  # each label in exactly one stream
    fitted = status["fittedScore"]
    assert arm.fitter.model is not None
    assert fitted["labels"] == len(fit_markers)
    assert fitted["fittedOn"] == arm.fitter.model.labels >= len(fit_markers) - 10
    assert len(fitted["weights"]) == score_fit.SHOWN_WEIGHTS
    assert status["tasks"]["*"]["threshold"] is not None
    sinks[1].flush()
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    refits = [line for line in audit if line["type"] == "score"]
    assert refits
    assert refits[-1]["labels"] == arm.fitter.model.labels


async def test_an_arm_that_does_not_score_combined_does_not_fit(tmp_path: Path) -> None:
    quality = shadow.Quality()
    assert quality.policy(name="chat", target=TARGET, combined=False).fitter is None
    # The same arm turning combined starts again with a fitter.
    assert quality.policy(name="chat", target=TARGET, combined=True).fitter is not None


def test_the_fitted_score_of_the_gateway_config_needs_the_combined_method() -> None:
    with pytest.raises(ValueError, match=r"fitScore .* needs confidence.method 'combined'"):
        config_mod.PolicyConfig(local_pool="pool", confidence={"target": TARGET})
    # With fitScore the weights are optional: they only start the model.
    served = config_mod.PolicyConfig(
        local_pool="pool", confidence={"method": "combined", "target": TARGET}
    )
    assert served.confidence.combined is None
    with pytest.raises(ValueError, match=r"needs confidence\.combined"):
        config_mod.ConfidenceConfig(method="combined")
