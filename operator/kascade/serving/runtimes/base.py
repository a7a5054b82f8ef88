"""What every runtime provides: prompt tokens in, scored token steps out.

A replica loads one runtime instance. It generates up to :attr:`Runtime.parallel`
sequences at once: :meth:`Runtime.generate` may be called from that many threads at the
same time (the llama-cpp runtime batches them into one decode per step).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from kascade.serving import confidence

__all__ = ["Message", "ModelLoadError", "Runtime", "SamplingParams", "Step"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One chat message as the chat template sees it."""

    role: str
    content: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` is greedy and deterministic."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    score: bool = True
    """Compute the per-token confidence scores (off only to measure their cost)."""
    json_schema: str | None = None
    """Constrain the output to JSON following this JSON Schema (JSON text), where the
    runtime can; None generates free text."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One generated token."""

    token_id: int
    text: str
    """Newly complete text (may be empty while a multi-byte character is split)."""
    is_end: bool
    """The token ends generation (end-of-turn / end-of-sequence); its text is not output."""
    score: confidence.TokenScore | None


class ModelLoadError(Exception):
    """A model could not be loaded into a runtime."""


class Runtime(Protocol):
    """One loaded model."""

    @property
    def parallel(self) -> int:
        """Sequences this runtime generates at once (concurrent :meth:`generate` calls)."""
        ...

    @property
    def context_length(self) -> int:
        """Tokens one sequence holds (prompt plus completion)."""
        ...

    @property
    def settings(self) -> Mapping[str, int | float | str]:
        """Engine settings derived from the pool (GPU offload, sequences, context),
        logged when the replica loads so the choice is visible."""
        ...

    def prompt_tokens(self, *, messages: Sequence[Message]) -> list[int]:
        """Applies the chat template (with the generation prompt) and tokenizes."""
        ...

    def generate(
        self, *, prompt: Sequence[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[Step]:
        """Yields at most ``params.max_tokens`` steps; stops early when ``cancel`` is set
        or when the iterator is closed."""
        ...

    def close(self) -> None:
        """Frees the model."""
        ...
