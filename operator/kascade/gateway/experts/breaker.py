"""Circuit breaker per expert (per gateway replica): closed → open → half-open."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Literal

from kascade.gateway import config as config_mod

State = Literal["closed", "open", "half-open"]


class Slot:
    """One call the breaker let through; end it exactly once.

    ``success()`` / ``failure()`` report the call; ``release()`` (safe to call in a
    ``finally`` after either) gives a half-open trial back when the call ended any
    other way (cancelled, client gone, refused before sending), so a trial can never
    leak and leave the expert shut out of this replica.
    """

    __slots__ = ("_breaker", "_done", "_epoch", "_trial")

    def __init__(self, breaker: CircuitBreaker, *, trial: bool, epoch: int) -> None:
        self._breaker = breaker
        self._trial = trial
        self._epoch = epoch
        self._done = False

    def success(self) -> None:
        if not self._done:
            self._done = True
            self._breaker.record_success(trial_epoch=self._epoch if self._trial else None)

    def failure(self) -> None:
        if not self._done:
            self._done = True
            self._breaker.record_failure()

    def release(self) -> None:
        if not self._done:
            self._done = True
            if self._trial:
                self._breaker.release_trial(epoch=self._epoch)


class CircuitBreaker:
    """Opens after `failureThreshold` failures (consecutive, or within `windowSeconds`),
    rejects for `openSeconds`, then half-opens: it closes after `halfOpenMaxRequests`
    (the CRD's `halfOpenProbes`) successful trial calls, and one failure re-opens it.

    Trials are limited so that the ones in flight plus the ones that already succeeded
    never exceed that number: a recovering upstream gets at most as many probes as
    it takes to close, a trial that ended without a report (cancelled, refused before
    sending) is given back. Only trials of the current half-open period count: a call
    let through while the circuit was closed that succeeds after it opened proves
    nothing about the upstream's recovery and changes no state."""

    def __init__(
        self,
        *,
        config: config_mod.CircuitBreakerConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self._state: State = "closed"
        self._failures: collections.deque[float] = collections.deque()
        self._opened_at = 0.0
        self._trials = 0  # half-open trials in flight
        self._probe_successes = 0  # trials of this half-open period that succeeded
        # Bumped whenever trials are reset, so a slot from an earlier half-open period
        # cannot give back a trial of the current one.
        self._epoch = 0

    @property
    def state(self) -> State:
        if self._state == "open" and self._clock() - self._opened_at >= (self.config.open_seconds):
            self._state = "half-open"
            self._reset_trials()
        return self._state

    def _reset_trials(self) -> None:
        self._trials = 0
        self._probe_successes = 0
        self._epoch += 1

    @property
    def consecutive_failures(self) -> int:
        self._forget_old()
        return len(self._failures)

    @property
    def trials_in_use(self) -> int:
        return self._trials if self.state == "half-open" else 0

    def reconfigure(self, *, config: config_mod.CircuitBreakerConfig) -> None:
        self.config = config

    def acquire(self) -> Slot | None:
        """A slot when a call may go out now (a half-open trial counts), else None."""
        state = self.state
        if state == "closed":
            return Slot(self, trial=False, epoch=self._epoch)
        if state == "open" or not self._trial_free():
            return None
        self._trials += 1
        return Slot(self, trial=True, epoch=self._epoch)

    def allow(self) -> bool:
        """True when a call may go out now (and counts a half-open trial)."""
        return self.acquire() is not None

    def available(self) -> bool:
        """Like allow(), without taking a half-open trial slot."""
        state = self.state
        return state == "closed" or (state == "half-open" and self._trial_free())

    def _trial_free(self) -> bool:
        """Another trial would not exceed the probes still needed to close."""
        return self._trials + self._probe_successes < self.config.half_open_max_requests

    def _forget_old(self) -> None:
        window = self.config.window_seconds
        if window is None:
            return
        cutoff = self._clock() - window
        while self._failures and self._failures[0] <= cutoff:
            self._failures.popleft()

    def record_success(self, *, trial_epoch: int | None = None) -> None:
        """A call succeeded; `trial_epoch` is the half-open period of a trial call."""
        if self.state != "closed":
            if self._state != "half-open" or trial_epoch != self._epoch:
                return  # not a probe of this half-open period (see the class doc)
            self._trials -= 1
            self._probe_successes += 1
            if self._probe_successes < self.config.half_open_max_requests:
                return
            self._state = "closed"
            self._reset_trials()
        if self.config.window_seconds is None:
            self._failures.clear()  # consecutive counting: a success resets it

    def record_failure(self) -> None:
        now = self._clock()
        self._failures.append(now)
        self._forget_old()
        threshold = self.config.failure_threshold
        while len(self._failures) > threshold:  # only the last `threshold` matter
            self._failures.popleft()
        if self._state == "half-open" or len(self._failures) >= threshold:
            self._state = "open"
            self._opened_at = now
            self._failures.clear()
            self._reset_trials()

    def release_trial(self, *, epoch: int | None = None) -> None:
        """Gives a half-open trial slot back when the call did not report."""
        if epoch is not None and epoch != self._epoch:
            return
        if self._state == "half-open" and self._trials > 0:
            self._trials -= 1
