"""The degeneration detector and the combined score built on its features."""

from __future__ import annotations

import math

import pytest

from kascade.gateway.route import combined_score, degeneration

LIMITS = degeneration.Limits()
HAIKU = "Write a haiku about Kubernetes."
LOOP = "In the tapestry of life, a tapestry of life, a tapestry of life, a tapestry of life, a"


def _verdict(answer: str, prompt: str = HAIKU, finish: str | None = "stop") -> str | None:
    features = degeneration.detect(answer=answer, prompt=prompt, finish_reason=finish)
    return degeneration.verdict(features=features, limits=LIMITS)


def test_the_quickstart_loop_is_flagged_as_repetition() -> None:
    features = degeneration.detect(answer=LOOP, prompt=HAIKU, finish_reason="length")
    assert features.repetition > 0.6
    assert degeneration.verdict(features=features, limits=LIMITS) == "repetition"


@pytest.mark.parametrize(
    "answer",
    [
        "Pods wake on the nodes,\nthe scheduler hums softly,\ncontainers take root.",
        "The capital of France is Paris.",
        "Paris",
        "53 times 23 is 1219. To check: 50 times 23 is 1150, and 3 times 23 is 69.",
    ],
)
def test_ordinary_answers_pass(answer: str) -> None:
    assert _verdict(answer, prompt="What is the capital of France?") is None


def test_empty_and_whitespace_answers_are_flagged() -> None:
    assert _verdict("") == "empty"
    assert _verdict(" \n\t ") == "empty"


def test_an_answer_that_parrots_the_question_is_flagged() -> None:
    prompt = "Explain how the Kubernetes scheduler decides where a pod runs."
    assert _verdict("Explain how the Kubernetes scheduler decides where a pod runs", prompt) == (
        "prompt_echo"
    )
    partial = degeneration.detect(
        answer="The capital of France is Paris.",
        prompt="What is the capital of France?",
        finish_reason="stop",
    )
    assert partial.prompt_echo == pytest.approx(0.5)


def test_cut_off_escalates_only_when_the_policy_asks() -> None:
    features = degeneration.detect(answer="The answer is", prompt="Q?", finish_reason="length")
    assert features.cut_off
    assert degeneration.verdict(features=features, limits=LIMITS) is None
    strict = degeneration.Limits(escalate_cut_off=True)
    assert degeneration.verdict(features=features, limits=strict) == "cut_off"


def test_limits_are_the_policy_s_to_set() -> None:
    features = degeneration.detect(answer=LOOP, prompt=HAIKU, finish_reason="stop")
    lenient = degeneration.Limits(max_repetition=0.99)
    assert degeneration.verdict(features=features, limits=lenient) is None


def test_prompt_text_is_the_last_user_message_with_text_parts_joined() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    assert degeneration.prompt_text(messages) == "a b"
    assert degeneration.prompt_text([{"role": "system", "content": "x"}]) == ""


SIGNALS = {
    "mean_token_prob": 0.8,
    "min_token_prob": 0.1,
    "margin": 0.5,
    "sequence_prob": 0.05,
    "mean_logprob": -0.4,
    "token_prob_q05": 0.1,
    "token_prob_q10": 0.2,
    "token_prob_q25": 0.5,
    "token_prob_q50": 0.9,
    "tokens": 9.0,
}


def _features(task: str | None = None) -> dict[str, float]:
    text = degeneration.detect(answer="Paris", prompt="Capital of France?", finish_reason="stop")
    values = combined_score.features(signals=SIGNALS, text=text, task=task)
    assert values is not None
    return values


def test_combined_features_take_logs_of_probabilities_and_name_the_task() -> None:
    values = _features(task="capital")
    assert values["log_mean_token_prob"] == pytest.approx(math.log(0.8))
    assert values["log_tokens"] == pytest.approx(math.log(10))
    assert values["task:capital"] == 1.0
    assert set(values) - {"task:capital"} == set(combined_score.FEATURE_NAMES)


def test_combined_score_is_the_logistic_of_the_weighted_sum() -> None:
    values = _features()
    weights = {"log_mean_token_prob": 2.0, "repetition": -5.0}
    z = 0.5 + 2.0 * math.log(0.8)
    got = combined_score.score(values=values, weights=weights, intercept=0.5)
    assert got == pytest.approx(1 / (1 + math.exp(-z)))
    assert combined_score.score(values=values, weights={}, intercept=-800.0) == pytest.approx(0.0)


def test_a_stronger_signal_raises_the_score_when_its_weight_is_positive() -> None:
    weights = {"log_token_prob_q10": 1.5}
    low = combined_score.score(values=_features(), weights=weights, intercept=0.0)
    better = {**SIGNALS, "token_prob_q10": 0.9}
    text = degeneration.detect(answer="Paris", prompt="Capital?", finish_reason="stop")
    values = combined_score.features(signals=better, text=text)
    assert values is not None
    assert combined_score.score(values=values, weights=weights, intercept=0.0) > low


def test_no_token_signals_means_no_combined_score() -> None:
    text = degeneration.detect(answer="Paris", prompt="Q", finish_reason="stop")
    assert combined_score.features(signals={"mean_token_prob": 0.5}, text=text) is None


def test_unknown_weight_names_are_reported() -> None:
    weights = {"log_tokens": 1.0, "task:math": 0.3, "mean_tokn_prob": 1.0}
    assert combined_score.unknown_features(weights) == ["mean_tokn_prob"]


def test_the_api_and_the_gateway_name_the_same_features() -> None:
    from kascade.api.v1alpha1 import routingpolicy

    assert routingpolicy.COMBINED_FEATURES == combined_score.FEATURE_NAMES
