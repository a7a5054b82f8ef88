"""The combined confidence score: a logistic model over token and text signals.

    score = 1 / (1 + exp(-(intercept + sum_k weight_k * feature_k)))

read as the estimated probability that the local answer is right. The weights are
configuration (a RoutingPolicy's ``confidence.combined``, compiled into the gateway's
ConfigMap), fitted by ``bench/routing_quality.py`` on graded answers, or fitted by the
gateway from its own labels (``confidence.target.fitScore``, ``route.score_fit``);
none live here.

Features (a weight for a feature that is absent counts as 0):

- ``log_mean_token_prob``, ``log_min_token_prob``, ``log_token_prob_q05``,
  ``log_token_prob_q10``, ``log_token_prob_q25``, ``log_token_prob_q50``: natural log
  of the pool's token-probability signals (floored at 1e-6).
- ``log_novel_token_prob_mean`` / ``_min``: the same over tokens not in the prompt;
  ``log_first_line_prob_mean`` / ``_min``: over the answer's first line (a pool that
  does not send them: the whole answer's mean / min stand in).
- ``margin``, ``mean_logprob``: as the pool reports them.
- ``log_tokens``: log(1 + generated tokens).
- ``repetition``, ``prompt_echo``, ``cut_off``, ``degenerate_empty``,
  ``log_answer_words``: from the degeneration detector.
- ``task:<label>``: 1 when the request's task label (header ``x-kascade-task``) is
  ``<label>``; lets one model hold a per-task offset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from kascade.gateway.route import degeneration

__all__ = ["FEATURE_NAMES", "features", "score", "unknown_features"]

_FLOOR = 1e-6
_LOG_SIGNALS = (
    "mean_token_prob",
    "min_token_prob",
    "token_prob_q05",
    "token_prob_q10",
    "token_prob_q25",
    "token_prob_q50",
)
_OPTIONAL_LOG_SIGNALS = {
    "novel_token_prob_mean": "mean_token_prob",
    "novel_token_prob_min": "min_token_prob",
    "first_line_prob_mean": "mean_token_prob",
    "first_line_prob_min": "min_token_prob",
}
"""Signals only a Kascade pool sends (they need the prompt's tokens), and the signal
that stands in for each when a pool does not."""
FEATURE_NAMES = (
    *(f"log_{name}" for name in _LOG_SIGNALS),
    *(f"log_{name}" for name in _OPTIONAL_LOG_SIGNALS),
    "margin",
    "mean_logprob",
    "log_tokens",
    "repetition",
    "prompt_echo",
    "cut_off",
    "degenerate_empty",
    "log_answer_words",
)
"""Every feature name a weight may use, besides ``task:<label>``."""


def features(
    *,
    signals: Mapping[str, float],
    text: degeneration.Features,
    task: str | None = None,
) -> dict[str, float] | None:
    """The feature vector, or None when the pool sent no token signals."""
    if not all(isinstance(signals.get(name), int | float) for name in _LOG_SIGNALS):
        return None
    out = {f"log_{name}": math.log(max(float(signals[name]), _FLOOR)) for name in _LOG_SIGNALS}
    for name, stand_in in _OPTIONAL_LOG_SIGNALS.items():
        value = signals.get(name)
        value = value if isinstance(value, int | float) else signals[stand_in]
        out[f"log_{name}"] = math.log(max(float(value), _FLOOR))
    out["margin"] = float(signals.get("margin", 0.0))
    out["mean_logprob"] = float(signals.get("mean_logprob", 0.0))
    out["log_tokens"] = math.log1p(float(signals.get("tokens", 0.0)))
    raw = text.as_signals()
    out["repetition"] = raw["repetition"]
    out["prompt_echo"] = raw["prompt_echo"]
    out["cut_off"] = raw["cut_off"]
    out["degenerate_empty"] = raw["degenerate_empty"]
    out["log_answer_words"] = math.log1p(raw["answer_words"])
    if task:
        out[f"task:{task}"] = 1.0
    return out


def score(*, values: Mapping[str, float], weights: Mapping[str, float], intercept: float) -> float:
    """The logistic score in [0, 1]."""
    z = intercept + sum(w * values.get(name, 0.0) for name, w in weights.items())
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def unknown_features(weights: Mapping[str, float]) -> list[str]:
    """Weight keys that name no feature (sorted); a config with any is rejected."""
    known = set(FEATURE_NAMES)
    return sorted(k for k in weights if k not in known and not k.startswith("task:"))
