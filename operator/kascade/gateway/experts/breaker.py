"""Circuit breaker per expert (per gateway replica): closed → open → half-open."""

from __future__ import annotations

import time
from typing import Literal

from kascade.gateway import config as config_mod

State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Opens after `failureThreshold` consecutive failures, rejects for `openSeconds`,
    then lets `halfOpenMaxRequests` trial calls through; one success closes it, one
    failure re-opens it."""

    def __init__(self, *, config: config_mod.CircuitBreakerConfig) -> None:
        self.config = config
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0

    @property
    def state(self) -> State:
        if self._state == "open" and time.monotonic() - self._opened_at >= (
            self.config.open_seconds
        ):
            self._state = "half-open"
            self._trials = 0
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def reconfigure(self, *, config: config_mod.CircuitBreakerConfig) -> None:
        self.config = config

    def allow(self) -> bool:
        """True when a call may go out now (and counts a half-open trial)."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        if self._trials < self.config.half_open_max_requests:
            self._trials += 1
            return True
        return False

    def available(self) -> bool:
        """Like allow(), without taking a half-open trial slot."""
        state = self.state
        return state == "closed" or (
            state == "half-open" and self._trials < self.config.half_open_max_requests
        )

    def record_success(self) -> None:
        self._state = "closed"
        self._failures = 0
        self._trials = 0

    def record_failure(self) -> None:
        self._failures += 1
        if self._state == "half-open" or self._failures >= self.config.failure_threshold:
            self._state = "open"
            self._opened_at = time.monotonic()
            self._trials = 0

    def release_trial(self) -> None:
        """Gives a half-open trial slot back when the call never went out."""
        if self._state == "half-open" and self._trials > 0:
            self._trials -= 1
