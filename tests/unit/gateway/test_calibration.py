"""The learned threshold: Clopper-Pearson bounds, fixed-sequence choice, convergence
on synthetic streams with known error rates and drift (the shadow spend cap: test_shadow_window)."""

from __future__ import annotations

import random

import pytest

from kascade.gateway.route import calibration


@pytest.mark.parametrize(
    ("errors", "n", "delta", "expected"),
    [
        (0, 10, 0.05, 1 - 0.05 ** (1 / 10)),  # closed form when no error was seen
        (0, 100, 0.1, 1 - 0.1 ** (1 / 100)),
        (5, 5, 0.1, 1.0),
        (0, 0, 0.1, 1.0),
    ],
)
def test_clopper_pearson_upper_matches_closed_forms(
    errors: int, n: int, delta: float, expected: float
) -> None:
    got = calibration.clopper_pearson_upper(errors=errors, n=n, delta=delta)
    assert got == pytest.approx(expected, abs=1e-9)


def test_clopper_pearson_upper_covers_the_true_rate_as_often_as_promised() -> None:
    rng = random.Random(1)
    p, n, delta, trials = 0.1, 200, 0.1, 400
    misses = sum(
        calibration.clopper_pearson_upper(
            errors=sum(rng.random() < p for _ in range(n)), n=n, delta=delta
        )
        < p
        for _ in range(trials)
    )
    assert misses / trials <= delta


def _stream(rng: random.Random, n: int, power: float) -> list[tuple[float, bool]]:
    """Scores uniform in [0, 1]; P(right | score s) = s ** power."""
    out = []
    for _ in range(n):
        s = rng.random()
        out.append((s, rng.random() < s**power))
    return out


def _local_error(labels: list[tuple[float, bool]], threshold: float) -> float:
    kept = [right for s, right in labels if s >= threshold]
    return 1.0 - sum(kept) / len(kept) if kept else 0.0


def test_the_choice_holds_the_target_on_fresh_traffic_and_is_not_needlessly_strict() -> None:
    # P(right | s) = s: the error among scores >= t is (1 - t) / 2, so t* = 0.6 for 20%.
    rng = random.Random(2)
    learned = calibration.choose_threshold(labels=_stream(rng, 2000, 1.0), max_error=0.2, delta=0.1)
    assert 0.6 <= learned.threshold <= 0.75
    assert learned.upper_bound <= 0.2
    assert _local_error(_stream(rng, 20000, 1.0), learned.threshold) <= 0.2


def test_the_lowest_threshold_whose_bound_holds_is_chosen() -> None:
    labels = [(0.9, True)] * 100 + [(0.5, False)] * 50 + [(0.1, True)] * 400
    learned = calibration.choose_threshold(labels=labels, max_error=0.1, delta=0.1)
    assert learned.threshold == 0.55  # lower thresholds would keep the wrong 0.5s
    assert learned.local_error_estimate == 0.0
    # 100 right answers bound the error at 1 - (0.1 / 20) ** (1 / 100) = 0.052.
    assert learned.upper_bound == pytest.approx(1 - 0.005 ** (1 / 100), abs=1e-9)


def test_nothing_acceptable_means_escalate_everything() -> None:
    labels = [(0.9, False)] * 100
    learned = calibration.choose_threshold(labels=labels, max_error=0.1, delta=0.1)
    assert learned.threshold == 1.0


def test_the_calibrator_converges_then_follows_a_drift() -> None:
    rng = random.Random(3)
    cal = calibration.Calibrator(max_error=0.2, delta=0.1, window=2000, min_labels=50)
    assert cal.threshold(task=None) is None  # too few labels: the policy's threshold rules
    changes = []
    for score, right in _stream(rng, 2000, 1.0):
        changes += cal.add(score=score, right=right, task=None)
    before = cal.threshold(task=None)
    assert before is not None
    assert 0.6 <= before <= 0.75  # t* = 0.6
    assert changes
    assert all(key == "" for key, _ in changes)
    assert _local_error(_stream(rng, 20000, 1.0), before) <= 0.2
    # Drift: the model gets worse (P(right | s) = s^2, t* = 0.78). Old labels age out.
    for score, right in _stream(rng, 2000, 2.0):
        cal.add(score=score, right=right, task=None)
    after = cal.threshold(task=None)
    assert after is not None
    assert before < after < 1.0
    assert _local_error(_stream(rng, 20000, 2.0), after) <= 0.2
    # Recovery: the model improves again, the threshold comes back down.
    for score, right in _stream(rng, 2000, 1.0):
        cal.add(score=score, right=right, task=None)
    recovered = cal.threshold(task=None)
    assert recovered is not None
    assert recovered < after


def test_a_task_with_enough_labels_gets_its_own_threshold() -> None:
    rng = random.Random(4)
    cal = calibration.Calibrator(max_error=0.2, delta=0.1, window=1000, min_labels=100)
    for score, right in _stream(rng, 1000, 1.0):
        cal.add(score=score, right=right, task="chat")
    for score, _ in _stream(rng, 400, 1.0):
        cal.add(score=score, right=True, task="math")  # always right
    math_t, chat_t = cal.threshold(task="math"), cal.threshold(task="chat")
    assert math_t is not None
    assert chat_t is not None
    assert math_t < chat_t
    assert cal.threshold(task="unseen") == cal.threshold(task=None)
    status = cal.status()
    assert status["math"]["labels"] == 400
    assert status["*"]["labels"] == 1000  # the window of all traffic
