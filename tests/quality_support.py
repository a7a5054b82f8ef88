"""Helpers for quality-target tests: a scripted Kascade pool's token signals whose
relation to right answers is known, so a fitted combined score has something to find."""

from __future__ import annotations

import math
import random


def scripted_signals(rng: random.Random) -> tuple[dict[str, float], bool]:
    """A Kascade pool's token signals and whether its answer is right: right (98%) when
    the least confident token is above e^-1.2, wrong (98%) otherwise; every other
    signal, the mean token probability included, is noise."""
    log_min = rng.uniform(-3.0, 0.0)
    right = (log_min > -1.2) != (rng.random() < 0.02)
    noise = {
        name: rng.uniform(0.3, 0.95)
        for name in (
            "mean_token_prob", "token_prob_q05", "token_prob_q10", "token_prob_q25",
            "token_prob_q50", "novel_token_prob_mean", "novel_token_prob_min",
            "first_line_prob_mean", "first_line_prob_min",
        )
    }  # fmt: skip
    return {**noise, "min_token_prob": math.exp(log_min), "tokens": 3.0}, right
