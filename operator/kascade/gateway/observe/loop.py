"""Event-loop stall monitor: how late a short timer fires is how long the loop was
blocked.

Two figures are kept, both as the largest seen since the process started:

- the **lag**: how late the timer fired, in wall time. It includes time the process
  was not running at all (descheduled by a busy machine, a paused VM);
- the **stall**: the part of the lag the loop's thread spent on the CPU, i.e.
  ``min(lag, thread CPU time since the previous tick)``. That is the time the loop
  was busy running callbacks (one long callback, or one turn of many ready ones,
  a garbage collection) instead of serving the timer.

The CPU time since the previous tick also holds the work done in the tick before the
timer was due, so the stall is an upper bound, too high by at most one tick. The tick
is a plain callback (no task) every ``TICK_S``: 5 ms keeps that error at a tenth of
the 50 ms a stall is judged against (a 10 ms tick let the figure read up to 10 ms
high), while an idle gateway's wake-ups stay cheap (about 1-2% of a core on the
2-core development machine; 2 ms cost 2-3%).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from kascade.gateway.observe import metrics as metrics_mod

TICK_S = 0.005


@dataclass
class Worst:
    """The largest lag and stall seen so far, in seconds."""

    lag: float = 0.0
    stall: float = 0.0

    def observe(self, *, late: float, cpu: float) -> bool:
        """Takes one tick that fired ``late`` seconds after it was due, with ``cpu``
        seconds of the loop thread's CPU since the previous tick; True if a maximum grew.
        """
        stall = max(0.0, min(late, cpu))
        grew = late > self.lag or stall > self.stall
        self.lag = max(self.lag, late)
        self.stall = max(self.stall, stall)
        return grew


async def watch(
    metrics: metrics_mod.Metrics,
    *,
    tick_s: float = TICK_S,
    wall: Callable[[], float] = time.perf_counter,
    cpu: Callable[[], float] = time.thread_time,
) -> None:
    """Runs until cancelled, keeping the largest lag and stall in gauges.

    ``wall`` and ``cpu`` are the clocks (injectable for tests); ``cpu`` must be the
    CPU time of the thread running the loop.
    """
    loop = asyncio.get_running_loop()
    worst = Worst()
    handle: asyncio.TimerHandle | None = None

    def tick(due: float, cpu_before: float) -> None:
        nonlocal handle
        now, cpu_now = wall(), cpu()
        if worst.observe(late=now - due, cpu=cpu_now - cpu_before):
            metrics.loop_lag_max.set(worst.lag)
            metrics.loop_stall_max.set(worst.stall)
        handle = loop.call_later(tick_s, tick, now + tick_s, cpu_now)

    handle = loop.call_later(tick_s, tick, wall() + tick_s, cpu())
    try:
        await loop.create_future()  # never set: the ticks run until cancelled
    finally:
        handle.cancel()
