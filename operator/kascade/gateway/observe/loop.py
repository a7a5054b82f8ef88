"""Event-loop stall monitor: how late a short timer fires is how long the loop was
blocked. Only the part of the delay the loop's thread spent on the CPU counts, so a
process descheduled by a busy machine is not reported as a stall of its own making."""

from __future__ import annotations

import asyncio
import time

from kascade.gateway.observe import metrics as metrics_mod

TICK_S = 0.01


async def watch(metrics: metrics_mod.Metrics) -> None:
    """Runs until cancelled, keeping the largest stall seen in a gauge."""
    worst = 0.0
    while True:
        wall, cpu = time.perf_counter(), time.thread_time()
        await asyncio.sleep(TICK_S)
        late = time.perf_counter() - wall - TICK_S
        stall = min(late, time.thread_time() - cpu)
        if stall > worst:
            worst = stall
            metrics.loop_stall_max.set(worst)
