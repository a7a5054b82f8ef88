"""Reading the local model's confidence and computing the threshold in force.

Dynamic threshold (when `confidence.dynamic` is set):

    u     = (spent + reserved) / limit, summed over the policy's experts
    e     = elapsed fraction of the budget window (1 for rolling-24h)
    burn  = u / max(e, 0.05)            1.0 = on pace to spend exactly the budget
    a     = fraction of the policy's experts unavailable (circuit open, throttled,
            blocked by an upstream 429, or budget exhausted)
    p     = clamp(budgetPressure * (burn - 1) + a, -1, 1)
    T     = base - p * (base - minThreshold)        if p >= 0
            base + (-p) * (maxThreshold - base)     if p <  0

A request escalates when its confidence is below T. So the bar for escalating rises
(T falls towards minThreshold) as money burns faster than the window's pace or
experts become unavailable, and falls (T rises towards maxThreshold) when budget is
left unused. T always stays within [minThreshold, maxThreshold].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kascade.api import wire
from kascade.gateway import config as config_mod

CONFIDENCE_HEADER = wire.CONFIDENCE_HEADER
_FLOOR = 1e-12
_SIGNAL_OF = {
    "mean-token-prob": "mean_token_prob",
    "min-token-prob": "min_token_prob",
    "margin": "margin",
    "sequence-prob": "sequence_prob",
    "token-prob-q10": "token_prob_q10",
}
"""Method name -> its key in a pool's `confidence_signals`."""
_KEYS = {
    "mean-token-prob": ("mean_token_prob", "meanTokenProb", "mean-token-prob", "mean"),
    "min-token-prob": ("min_token_prob", "minTokenProb", "min-token-prob", "min"),
    "margin": ("margin",),
}


def _probability(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0.0 <= number <= 1.0 else None


def _token_lists(choice: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    """(p(token), top-1 minus top-2) per token from OpenAI-style `logprobs.content`."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content:
        return None
    probs: list[float] = []
    margins: list[float] = []
    for token in content:
        if not isinstance(token, dict) or not isinstance(token.get("logprob"), int | float):
            return None
        p = math.exp(token["logprob"])
        probs.append(p)
        top = token.get("top_logprobs")
        alts = sorted(
            (math.exp(t["logprob"]) for t in top if isinstance(t, dict) and "logprob" in t)
            if isinstance(top, list)
            else [],
            reverse=True,
        )
        margins.append(alts[0] - alts[1] if len(alts) >= 2 else p)
    return probs, margins


def signals_from_logprobs(choice: Mapping[str, Any]) -> dict[str, float] | None:
    """The pool's signal set (see `serving.confidence.SIGNAL_NAMES`) rebuilt from
    OpenAI-style logprobs, for pools that send those instead of `confidence_signals`."""
    lists = _token_lists(choice)
    if lists is None:
        return None
    probs, margins = lists
    ordered = sorted(probs)
    logs = [math.log(max(p, _FLOOR)) for p in probs]

    def quantile(q: float) -> float:
        return ordered[int(q * (len(ordered) - 1))]

    return {
        "mean_token_prob": sum(probs) / len(probs),
        "min_token_prob": ordered[0],
        "margin": sum(margins) / len(margins),
        "sequence_prob": math.exp(sum(logs)),
        "mean_logprob": sum(logs) / len(logs),
        "token_prob_q05": quantile(0.05),
        "token_prob_q10": quantile(0.10),
        "token_prob_q25": quantile(0.25),
        "token_prob_q50": quantile(0.50),
        "tokens": float(len(probs)),
    }


def from_logprobs(*, choice: Mapping[str, Any], method: str) -> float | None:
    """Confidence computed from OpenAI-style `logprobs.content`, if the pool sent them."""
    found = signals_from_logprobs(choice)
    if found is None:
        return None
    return min(1.0, max(0.0, found.get(_SIGNAL_OF.get(method, ""), found["mean_token_prob"])))


def signals(*, body: Mapping[str, Any]) -> dict[str, float] | None:
    """Every confidence signal of the answer: the body's `confidence_signals` (a Kascade
    pool), else rebuilt from logprobs; None when the pool sent neither."""
    sent = body.get(wire.CONFIDENCE_SIGNALS_FIELD)
    if isinstance(sent, dict):
        numbers = {
            k: float(v)
            for k, v in sent.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        if numbers:
            return numbers
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return signals_from_logprobs(choices[0])
    return None


def extract(*, body: Mapping[str, Any], headers: Mapping[str, str], method: str) -> float | None:
    """The local answer's confidence: the method's entry in `confidence_signals`, else
    body `confidence` (number, or object keyed by method), else header
    `x-kascade-confidence`, else computed from logprobs."""
    sent = body.get(wire.CONFIDENCE_SIGNALS_FIELD)
    if isinstance(sent, dict) and method in _SIGNAL_OF:
        found = _probability(sent.get(_SIGNAL_OF[method]))
        if found is not None:
            return found
    value = body.get(wire.CONFIDENCE_FIELD)
    if isinstance(value, dict):
        for key in _KEYS.get(method, ()):
            if key in value:
                return _probability(value[key])
    elif value is not None:
        found = _probability(value)
        if found is not None:
            return found
    header = headers.get(CONFIDENCE_HEADER)
    if header is not None:
        found = _probability(header)
        if found is not None:
            return found
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return from_logprobs(choice=choices[0], method=method)
    return None


def threshold(
    *,
    confidence: config_mod.ConfidenceConfig,
    burn: float | None,
    unavailable_fraction: float,
) -> float:
    """The threshold in force (see the module docstring for the formula)."""
    base = confidence.threshold
    dynamic = confidence.dynamic
    if dynamic is None:
        return base
    base = min(max(base, dynamic.min_threshold), dynamic.max_threshold)
    burn_term = dynamic.budget_pressure * (burn - 1.0) if burn is not None else 0.0
    p = max(-1.0, min(1.0, burn_term + unavailable_fraction))
    if p >= 0:
        return base - p * (base - dynamic.min_threshold)
    return base + (-p) * (dynamic.max_threshold - base)
