"""run_generation marks which scored tokens are novel and which are on the first line,
driven by a scripted runtime (the token stream is what is under test, not a model)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest

from kascade.serving import confidence, config, generation
from kascade.serving.runtimes import base


class _Scripted:
    """Yields a fixed list of (token id, text, probability) steps, then an end token."""

    def __init__(self, steps: list[tuple[int, str, float]]) -> None:
        self._steps = steps

    @property
    def context_length(self) -> int:
        return 64

    def prompt_tokens(self, *, messages: Sequence[base.Message]) -> list[int]:
        raise NotImplementedError("the tests pass token ids directly")

    def close(self) -> None:
        pass

    def generate(
        self, *, prompt: Sequence[int], params: base.SamplingParams, cancel: threading.Event
    ) -> Iterator[base.Step]:
        for token, text, p in self._steps:
            score = confidence.TokenScore(prob=p, top1=p, top2=0.0)
            yield base.Step(token_id=token, text=text, is_end=False, score=score)
        end = confidence.TokenScore(prob=0.9, top1=0.9, top2=0.0)
        yield base.Step(token_id=0, text="", is_end=True, score=end)


def _finished(steps: list[tuple[int, str, float]], prompt: list[int]) -> generation.Finished:
    events = list(
        generation.run_generation(
            runtime=_Scripted(steps),
            prompt=prompt,
            params=base.SamplingParams(max_tokens=16),
            stops=[],
            method=config.ConfidenceMethod.MEAN_TOKEN_PROB,
            cancel=threading.Event(),
        )
    )
    last = events[-1]
    assert isinstance(last, generation.Finished)
    return last


def test_copied_tokens_and_later_lines_are_told_apart() -> None:
    steps = [
        (11, "\n", 0.95),  # a leading blank line does not end the first line
        (12, "The", 0.97),  # copied from the prompt
        (13, " answer", 0.2),  # novel
        (14, ".\n", 0.7),  # novel, ends the first line
        (15, "More", 0.1),  # second line
    ]
    finished = _finished(steps, prompt=[11, 12, 99])
    signals = finished.signals
    assert signals is not None
    # Novel: 13, 14, 15 and the end token (id 0).
    assert signals["novel_token_prob_mean"] == pytest.approx((0.2 + 0.7 + 0.1 + 0.9) / 4)
    assert signals["novel_token_prob_min"] == pytest.approx(0.1)
    # First line: 11, 12, 13, 14.
    assert signals["first_line_prob_mean"] == pytest.approx((0.95 + 0.97 + 0.2 + 0.7) / 4)
    assert signals["first_line_prob_min"] == pytest.approx(0.2)
    assert finished.completion_tokens == 5
