"""L2-regularised logistic regression, the one fit of the combined score's weights.

Used by the gateway (``route.score_fit``: a policy with ``confidence.target.fitScore``
fits its own weights from its labels) and by ``bench/routing_quality.py`` (weights to
put in a policy's ``confidence.combined``); one implementation, so both give the same
model on the same labels.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["fit_logistic"]

Array = npt.NDArray[np.float64]


def fit_logistic(*, x: Array, y: Array, l2: float = 1.0, steps: int = 50) -> tuple[Array, float]:
    """L2-regularised logistic regression by Newton's method on standardised columns;
    returns (weights, intercept) for the raw columns. Raises ``numpy.linalg.LinAlgError``
    when the Newton system is singular (e.g. every label the same class)."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / std])
    beta = np.zeros(z.shape[1])
    penalty = np.eye(z.shape[1]) * l2
    penalty[0, 0] = 0.0  # the intercept is not shrunk: it carries the base rate
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ beta)))
        grad = z.T @ (p - y) + penalty @ beta
        hess = (z * (p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.solve(hess, grad)
        beta -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    weights = beta[1:] / std
    return weights, float(beta[0] - (weights * mean).sum())
