"""The event-loop monitor: a stall is time the loop's thread spent on the CPU while a
timer was overdue; wall-clock lateness alone (a descheduled process) is only lag.
Clocks are injected: the test moves them from a callback on the loop, as a blocking
callback would, and no assertion depends on real time."""

from __future__ import annotations

import asyncio

from kascade.gateway.observe import loop as loop_monitor
from kascade.gateway.observe import metrics as metrics_mod


def test_a_late_tick_counts_only_its_cpu_as_a_stall() -> None:
    worst = loop_monitor.Worst()
    assert worst.observe(late=0.080, cpu=0.004)  # descheduled: 80 ms late, 4 ms on CPU
    assert (worst.lag, worst.stall) == (0.080, 0.004)
    assert worst.observe(late=0.060, cpu=0.075)  # busy: the lateness is the stall
    assert (worst.lag, worst.stall) == (0.080, 0.060)
    assert not worst.observe(late=-0.001, cpu=0.002)  # early (coarse timers): nothing
    assert (worst.lag, worst.stall) == (0.080, 0.060)


class _Clocks:
    def __init__(self) -> None:
        self.wall = 1000.0
        self.cpu = 5.0

    def spend(self, *, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu


def _gauges(metrics: metrics_mod.Metrics) -> tuple[float | None, float | None]:
    read = metrics.registry.get_sample_value
    return (
        read("kascade_event_loop_stall_max_seconds"),
        read("kascade_event_loop_lag_max_seconds"),
    )


async def _run_until(
    metrics: metrics_mod.Metrics, clocks: _Clocks, block: dict[str, float]
) -> None:
    loop = asyncio.get_running_loop()
    task = loop.create_task(
        loop_monitor.watch(metrics, tick_s=0.001, wall=lambda: clocks.wall, cpu=lambda: clocks.cpu)
    )
    try:
        await asyncio.sleep(0)  # a yield, not a wait: the monitor schedules its first tick
        clocks.spend(**block)  # one callback "ran" this long before the tick could fire
        deadline = loop.time() + 30
        while _gauges(metrics) == (0.0, 0.0):
            assert loop.time() < deadline, "the monitor never ticked"
            # A poll for the observable gauge: the monitor ticks on the loop's own timer
            # (its clocks are injected, its scheduling is real), so the test yields to it.
            await asyncio.sleep(0.001)
    finally:
        task.cancel()


async def test_a_callback_busy_on_the_cpu_is_reported_as_a_stall() -> None:
    metrics, clocks = metrics_mod.Metrics(), _Clocks()
    await _run_until(metrics, clocks, {"wall": 0.071, "cpu": 0.071})
    stall, lag = _gauges(metrics)
    # 71 ms after the tick was scheduled, 1 ms of which it was not yet due.
    assert lag == stall
    assert abs(stall - 0.070) < 1e-9


async def test_a_descheduled_process_is_lag_not_stall() -> None:
    metrics, clocks = metrics_mod.Metrics(), _Clocks()
    await _run_until(metrics, clocks, {"wall": 0.071, "cpu": 0.002})
    stall, lag = _gauges(metrics)
    assert abs(lag - 0.070) < 1e-9
    assert abs(stall - 0.002) < 1e-9
