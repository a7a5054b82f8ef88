"""A quality target under an A/B split: each variant learns its threshold from its own
labels (scores of two arms need not share a scale), arms with different targets do not
reset each other, and the arms' shadow calls share the policy's one spend cap."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from kascade.gateway import config as config_mod
from kascade.gateway import ledger
from kascade.gateway.observe import audit as audit_mod
from kascade.gateway.observe import metrics as metrics_mod
from kascade.gateway.route import shadow

TARGET = config_mod.TargetConfig(
    max_local_error_rate=0.1, window_labels=1000, min_labels=50, max_shadow_budget_share=0.2
)


def _scaled(rng: random.Random, *, right_at: tuple[float, float], wrong_below: float) -> Any:
    """(score, right): half the answers are right and score in ``right_at``, half are
    wrong and score below ``wrong_below`` (one arm's scale)."""
    if rng.random() < 0.5:
        return rng.uniform(*right_at), True
    return rng.uniform(0.0, wrong_below), False


def _label(
    arm: shadow.PolicyQuality, score: float, right: bool, sinks: tuple[Any, Any], task: str = ""
) -> None:
    shadow.add_label(
        quality=arm,
        task=task or None,
        score=score,
        right=right,
        metrics=sinks[0],
        audit=sinks[1],
    )


def _sinks(tmp_path: Path) -> tuple[metrics_mod.Metrics, audit_mod.AuditLog]:
    return metrics_mod.Metrics(), audit_mod.AuditLog(path=str(tmp_path / "audit.jsonl"))


def _audit(tmp_path: Path, audit: audit_mod.AuditLog) -> list[dict[str, Any]]:
    audit.flush()
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_two_arms_with_different_score_scales_learn_their_own_thresholds(tmp_path: Path) -> None:
    quality = shadow.Quality()
    sinks = _sinks(tmp_path)
    # "tokens" scores right answers ~0.9 and wrong ones below 0.5; "combined" scores
    # right answers ~0.3 and wrong ones below 0.15. One threshold cannot serve both.
    tokens = quality.policy(name="chat", variant="tokens", target=TARGET)
    combined = quality.policy(name="chat", variant="combined", target=TARGET)
    rng = random.Random(21)
    for _ in range(600):
        _label(tokens, *_scaled(rng, right_at=(0.85, 0.95), wrong_below=0.5), sinks)
        _label(combined, *_scaled(rng, right_at=(0.25, 0.35), wrong_below=0.15), sinks)
    t_tokens = tokens.calibrator.threshold(task=None)
    t_combined = combined.calibrator.threshold(task=None)
    assert t_tokens is not None
    assert t_combined is not None
    assert 0.5 <= t_tokens <= 0.85  # keeps every right answer of its arm, no wrong one
    assert 0.15 <= t_combined <= 0.25  # the same for the other scale
    # Fresh traffic of each arm, at its own threshold: no wrong answer is kept local and
    # every right one is.
    scales = ((t_tokens, (0.85, 0.95), 0.5), (t_combined, (0.25, 0.35), 0.15))
    for arm_t, right_at, wrong_below in scales:
        fresh = [_scaled(rng, right_at=right_at, wrong_below=wrong_below) for _ in range(2000)]
        assert all(right == (score >= arm_t) for score, right in fresh)
    # Each arm is reported under its own name: status, audit lines, metrics.
    arms = quality.status()["chat"]["variants"]
    assert arms["tokens"]["tasks"]["*"]["threshold"] == t_tokens
    assert arms["combined"]["tasks"]["*"]["threshold"] == t_combined
    assert arms["tokens"]["tasks"]["*"]["labels"] == 600
    changes = [line for line in _audit(tmp_path, sinks[1]) if line["type"] == "threshold"]
    assert {line["variant"] for line in changes} == {"tokens", "combined"}
    last = {line["variant"]: line["threshold"] for line in changes}
    assert last == {"tokens": t_tokens, "combined": t_combined}
    labels = {"policy": "chat", "task": "*", "variant": "combined"}
    assert sinks[0].registry.get_sample_value("kascade_learned_threshold", labels) == t_combined
    assert sinks[0].registry.get_sample_value("kascade_quality_labels", labels) == 600


def test_arms_with_different_targets_both_learn_instead_of_resetting_each_other(
    tmp_path: Path,
) -> None:
    quality = shadow.Quality()
    sinks = _sinks(tmp_path)
    # 100 right labels bound the error at 0.052 (see test_calibration): 0.06 is reachable.
    strict = TARGET.model_copy(update={"max_local_error_rate": 0.06})
    rng = random.Random(22)
    for _ in range(200):  # requests alternate between the arms, as A/B traffic does
        for variant, target in (("a", TARGET), ("b", strict)):
            arm = quality.policy(name="chat", variant=variant, target=target)
            _label(arm, *_scaled(rng, right_at=(0.8, 1.0), wrong_below=0.5), sinks)
    for variant, target in (("a", TARGET), ("b", strict)):
        arm = quality.policy(name="chat", variant=variant, target=target)
        assert arm.calibrator.status()["*"]["labels"] == 200
        learned = arm.calibrator.threshold(task=None)
        assert learned is not None
        assert learned <= 0.8  # learned from its labels, not "escalate everything"
    arms = quality.status()["chat"]["variants"]
    assert arms["a"]["maxLocalErrorRate"] == 0.1
    assert arms["b"]["maxLocalErrorRate"] == 0.06
    # A changed target restarts only that arm's labels.
    moved = quality.policy(name="chat", variant="a", target=strict)
    assert moved.calibrator.status() == {}
    assert quality.policy(name="chat", variant="b", target=strict).calibrator.status() != {}


def test_a_policy_without_variants_keeps_its_status_shape_and_labels(tmp_path: Path) -> None:
    quality = shadow.Quality()
    sinks = _sinks(tmp_path)
    arm = quality.policy(name="plain", target=TARGET)
    rng = random.Random(23)
    for _ in range(60):
        _label(arm, *_scaled(rng, right_at=(0.8, 1.0), wrong_below=0.5), sinks)
    entry = quality.status()["plain"]
    assert set(entry) == {"maxLocalErrorRate", "confidenceLevel", "tasks"}
    assert entry["tasks"]["*"]["labels"] == 60
    changes = [line for line in _audit(tmp_path, sinks[1]) if line["type"] == "threshold"]
    assert changes
    assert all(line["variant"] is None for line in changes)
    labels = {"policy": "plain", "task": "*", "variant": ""}
    assert sinks[0].registry.get_sample_value("kascade_quality_labels", labels) == 60


def test_status_shows_only_the_arms_that_serve_now() -> None:
    quality = shadow.Quality()
    quality.policy(name="chat", target=TARGET)  # before the policy got variants
    quality.policy(name="chat", variant="a", target=TARGET)
    quality.policy(name="chat", variant="old", target=TARGET)
    assert quality.status(serving={("chat", "a")}) == {
        "chat": {"variants": {"a": {"maxLocalErrorRate": 0.1, "confidenceLevel": 0.9, "tasks": {}}}}
    }


async def test_the_arms_shadow_calls_together_never_pass_the_policys_share() -> None:
    rng = random.Random(24)
    quality = shadow.Quality(rng=rng.random)
    target = TARGET.model_copy(update={"shadow_fraction": 0.5})
    arms = [quality.policy(name="chat", variant=v, target=target) for v in ("a", "b", "c")]
    share, books = 0.2, ledger.MemoryLedger(clock=lambda: 1_800_000_000.0)
    budget = ledger.Budget(limit_nanos=1_000_000, window="calendar-month")
    open_calls: list[tuple[shadow.PolicyQuality, ledger.Reservation, int, int]] = []
    admitted: dict[str | None, int] = {}
    refused = settled = 0
    for _ in range(6000):
        arm = rng.choice(arms)
        if rng.random() < 0.5 and arm.budget.sample():
            worst = rng.randint(1000, 20000)
            held = await arm.budget.admit(
                ledger_backend=books, expert="e1", budget=budget, worst_nanos=worst, request_id="r"
            )
            if held is not None:
                admitted[arm.variant] = admitted.get(arm.variant, 0) + 1
                open_calls.append((arm, held, worst, rng.randint(0, worst)))
            else:
                refused += 1
        elif open_calls:  # settle a random open call, on the arm that made it
            owner, held, worst, actual = open_calls.pop(rng.randrange(len(open_calls)))
            await owner.budget.settle(ledger_backend=books, reservation=held, actual_nanos=actual)
            settled += actual
        held_total = sum(worst for _, _, worst, _ in open_calls)
        # What the three arms spent and hold together stays within the one declared
        # share (three arms do not get three shares), and every arm reports that total.
        assert settled + held_total <= share * budget.limit_nanos
        spent = {
            await arm.budget.spent(ledger_backend=books, expert="e1", budget=budget) for arm in arms
        }
        assert spent == {settled}
    assert set(admitted) == {"a", "b", "c"}
    assert refused > 0  # the cap was reached and held
    assert settled > share * budget.limit_nanos - 2 * 20000  # and nearly all of it was used


async def test_a_new_target_on_one_arm_keeps_the_policys_shadow_spend() -> None:
    quality = shadow.Quality()
    books = ledger.MemoryLedger(clock=lambda: 1_800_000_000.0)
    budget = ledger.Budget(limit_nanos=1000, window="calendar-month")
    kwargs: dict[str, Any] = {"ledger_backend": books, "expert": "e1", "budget": budget}
    a = quality.policy(name="chat", variant="a", target=TARGET)
    held = await a.budget.admit(worst_nanos=150, request_id="r", **kwargs)
    assert held is not None
    await a.budget.settle(ledger_backend=books, reservation=held, actual_nanos=150)
    renewed = quality.policy(
        name="chat", variant="a", target=TARGET.model_copy(update={"min_labels": 60})
    )
    # 150 of the 200 allowed are spent already: a fresh arm state does not forget them.
    assert await renewed.budget.spent(**kwargs) == 150
    assert await renewed.budget.admit(worst_nanos=100, request_id="r", **kwargs) is None
    other = quality.policy(name="other", target=TARGET)
    assert await other.budget.spent(**kwargs) == 0  # another policy has its own share
