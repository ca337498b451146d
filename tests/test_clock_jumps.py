"""What a step of the system clock does to processing: a Pi without a real-time clock boots in 1970 (or at the
last shutdown), and NTP steps its clock by hours once the uplink is up; an operator may set it back by hand.

Time is given explicitly; nothing sleeps.
"""

from __future__ import annotations

from typing import Any

from gateway.clock import Jump
from gateway.model.readings import Quality
from gateway.processing import Output
from gateway.processing.alarms import ThresholdAlarm
from gateway.processing.counters import ConsumptionStats
from gateway.processing.windows import WindowStats
from tests.test_processing import MINUTE, T0, Clock, alarm, catalogue, device, make_processor, reading

HOUR = 3_600_000


def step(clock: Clock, delta_ms: int) -> Jump:
    jump = Jump(delta_ms, clock.now, clock.now + delta_ms)
    clock.now += delta_ms
    return jump


def poll(processor: Any, clock: Clock, pressure: float, volume: float | None = None) -> Output:
    readings = [reading("outlet-pressure", pressure, clock.now, point="p")]
    if volume is not None:
        readings.append(reading("gas-volume", volume, clock.now, point="v"))
    out = processor.process("plc", readings)
    ticked = processor.tick()
    return Output(out.readings + ticked.readings, out.statistics + ticked.statistics, out.events + ticked.events)


def metered_station(clock: Clock) -> Any:
    points = [{"name": "p", "indicator": "outlet-pressure"}, {"name": "v", "indicator": "gas-volume"}]
    return make_processor(catalogue(windows=[60]), [device(*points, poll_interval=10)], clock=clock)


def test_a_forward_step_of_hours_neither_makes_the_device_stale_nor_loses_the_open_windows() -> None:
    clock = Clock(T0)
    processor = metered_station(clock)
    for volume in (100.0, 101.0, 102.0):  # 20 s into a minute window
        poll(processor, clock, 440.0, volume)
        clock.now += 10_000
    jump = step(clock, 3 * HOUR)
    closed = processor.clock_jumped(jump).statistics
    stats = {type(s): s for _, s in closed}
    pressure, volume = stats[WindowStats], stats[ConsumptionStats]
    assert isinstance(pressure, WindowStats) and isinstance(volume, ConsumptionStats)
    assert (pressure.start_ms, pressure.end_ms, pressure.count, pressure.interrupted) == (T0, T0 + 30_000, 3, True)
    assert pressure.good == 1.0  # of the 30 s the window was open, not of its 60
    assert volume.consumption == 2.0 and volume.interrupted
    events: list[Any] = []
    statistics: list[Any] = []
    for _ in range(40):  # seven minutes of polls after the step
        out = poll(processor, clock, 440.0, 103.0)
        events += out.events
        statistics += [s for _, s in out.statistics]
        clock.now += 10_000
    assert events == []
    landed, *whole = [s for s in statistics if isinstance(s, WindowStats)]
    assert (landed.start_ms, landed.interrupted) == (jump.after_ms, True)
    assert whole and all(s.start_ms % MINUTE == 0 and not s.interrupted and s.good == 1.0 for s in whole)


def test_without_being_told_the_same_step_would_raise_stale_data() -> None:
    # The other side of the test above: the processor's supervision does measure time by the wall clock.
    clock = Clock(T0)
    processor = metered_station(clock)
    poll(processor, clock, 440.0, 100.0)
    clock.now += 3 * HOUR
    assert [e.level for e in processor.tick().events] == ["stale-data"]


def test_a_backward_step_closes_the_window_and_the_next_samples_count_in_a_new_one() -> None:
    clock = Clock(T0 + 20_000)
    processor = metered_station(clock)
    poll(processor, clock, 440.0, 100.0)
    clock.now += 10_000
    poll(processor, clock, 442.0, 101.0)
    clock.now += 5_000
    jump = step(clock, -HOUR)
    (pressure,) = [s for _, s in processor.clock_jumped(jump).statistics if isinstance(s, WindowStats)]
    assert (pressure.start_ms, pressure.end_ms, pressure.count) == (T0, T0 + 35_000, 2)
    assert pressure.minimum == 440.0 and pressure.maximum == 442.0
    statistics = []
    for _ in range(13):
        statistics += [s for _, s in poll(processor, clock, 444.0, 102.0).statistics]
        clock.now += 10_000
    landed, *whole = [s for s in statistics if isinstance(s, WindowStats)]
    # The window the clock landed in holds what came after the step, from the step on; the next are whole.
    assert (landed.start_ms, landed.interrupted, landed.mean, landed.good) == (jump.after_ms, True, 444.0, 1.0)
    assert whole and all(s.start_ms % MINUTE == 0 and not s.interrupted and s.mean == 444.0 for s in whole)
    consumed = [s for s in statistics if isinstance(s, ConsumptionStats)]
    assert consumed[0].consumption == 1.0  # 101 -> 102: consumption carries across the step


def test_a_pending_delay_counts_the_time_that_passed_not_the_step() -> None:
    rule: ThresholdAlarm = alarm(level="high", limit=20, delay_on=60)
    assert rule.update(25.0, True, T0) is None
    rule.shift(3 * HOUR)
    assert rule.update(25.0, True, T0 + 3 * HOUR + 59_000) is None  # 59 s of the 60 have passed
    raised = rule.update(25.0, True, T0 + 3 * HOUR + 60_000)
    assert raised is not None and raised.event == "raised"


def test_a_bad_reading_after_a_step_is_still_a_bad_reading() -> None:
    clock = Clock(T0)
    processor = metered_station(clock)
    poll(processor, clock, 440.0, 100.0)
    processor.clock_jumped(step(clock, 2 * HOUR))
    bad = reading("outlet-pressure", None, clock.now, Quality.BAD, point="p", reason="timeout")
    assert processor.failed("plc", "timeout", [bad]).readings == [bad]
