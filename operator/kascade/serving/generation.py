"""Drives a runtime: stop sequences, finish reason, token counts and confidence.

Synchronous on purpose: it runs on the slot's own thread, next to the model, and the
server relays its events to the event loop.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence

from kascade.serving import confidence, config
from kascade.serving.runtimes import base

__all__ = ["Finished", "StopMatcher", "TextDelta", "run_generation"]


@dataclasses.dataclass(frozen=True, slots=True)
class TextDelta:
    """Text that is final (no stop sequence can still swallow it)."""

    text: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    """The end of a completion."""

    finish_reason: str
    """``stop`` (end token or stop sequence) or ``length`` (max_tokens reached)."""
    completion_tokens: int
    """Generated tokens, not counting the end token."""
    confidence: float | None
    """Per the pool's method; None only when scoring was turned off."""
    signals: dict[str, float] | None = None
    """Every confidence signal (see ``confidence.SIGNAL_NAMES``); None when scoring was off."""


Event = TextDelta | Finished


class StopMatcher:
    """Cuts text at the first stop sequence, holding back what may start one."""

    def __init__(self, *, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Adds text; returns (text safe to emit, whether a stop sequence was hit)."""
        self._pending += text
        if not self._stops:
            out, self._pending = self._pending, ""
            return out, False
        cut = min((i for s in self._stops if (i := self._pending.find(s)) >= 0), default=-1)
        if cut >= 0:
            out, self._pending = self._pending[:cut], ""
            return out, True
        # Keep the longest tail that could still be the start of a stop sequence.
        keep = 0
        for n in range(min(self._hold, len(self._pending)), 0, -1):
            tail = self._pending[-n:]
            if any(s.startswith(tail) for s in self._stops):
                keep = n
                break
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return out, False

    def flush(self) -> str:
        """Text still held when generation ended without a stop sequence."""
        out, self._pending = self._pending, ""
        return out


def run_generation(
    *,
    runtime: base.Runtime,
    prompt: Sequence[int],
    params: base.SamplingParams,
    stops: Sequence[str],
    method: config.ConfidenceMethod,
    cancel: threading.Event,
) -> Iterator[Event]:
    """Yields text deltas, then exactly one :class:`Finished` (unless cancelled)."""
    matcher = StopMatcher(stops=stops)
    acc = confidence.ConfidenceAccumulator()
    in_prompt = set(prompt)
    answered = False  # some text of the first line was generated
    first_line = True
    tokens = 0
    finish = "length"
    for step in runtime.generate(prompt=prompt, params=params, cancel=cancel):
        if step.score is not None:
            acc.add(step.score, novel=step.token_id not in in_prompt, first_line=first_line)
        head, newline, _ = step.text.partition("\n")
        if newline and (answered or head.strip()):
            first_line = False  # later tokens are past the first line with text
        answered = answered or bool(step.text.strip())
        if step.is_end:
            finish = "stop"
            break
        tokens += 1
        text, stopped = matcher.feed(step.text)
        if text:
            yield TextDelta(text)
        if stopped:
            finish = "stop"
            break
    if cancel.is_set():
        return
    # After a stop sequence the matcher holds nothing; after an end token or max_tokens
    # it may hold a tail that only looked like the start of a stop sequence.
    tail = matcher.flush()
    if tail:
        yield TextDelta(tail)
    yield Finished(
        finish_reason=finish,
        completion_tokens=tokens,
        confidence=acc.value(method=method) if acc.count else None,
        signals=acc.signals() if acc.count else None,
    )
