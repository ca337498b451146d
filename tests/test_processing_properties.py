"""Properties of the processing rules that must hold for any sequence of samples (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model.readings import Quality
from gateway.model.rules import Counter, Reporting
from gateway.processing.counters import ConsumptionStats, ConsumptionWindow
from gateway.processing.exception import ReportByException
from gateway.processing.windows import SeriesInfo, StatisticsWindow, WindowStats

INFO = SeriesInfo("flow", "m3/h", "MQH")
T0 = 1_700_000_040_000

values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
gaps = st.integers(min_value=1, max_value=200_000)  # ms between samples
samples = st.lists(st.tuples(gaps, values, st.booleans()), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(samples, st.sampled_from([60, 300, 900]), st.integers(min_value=1_000, max_value=600_000))
def test_windowed_min_le_mean_le_max(sequence: list[tuple[int, float, bool]], size: int, hold: int) -> None:
    window = StatisticsWindow(INFO, size, hold)
    closed: list[object] = []
    now = T0
    for gap, value, good in sequence:
        now += gap
        closed += window.add(now, value, good)
    closed += window.close_until(now + size * 1000)
    for stats in closed:
        assert isinstance(stats, WindowStats)
        assert 0.0 <= stats.good <= 1.0
        assert stats.end_ms - stats.start_ms == size * 1000 and stats.start_ms % (size * 1000) == 0
        if stats.mean is not None:
            assert stats.minimum is not None and stats.maximum is not None
            assert stats.minimum <= stats.mean <= stats.maximum


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([16, 32, 64]),
       st.lists(st.tuples(gaps, st.integers(min_value=0, max_value=30_000)), min_size=1, max_size=80),
       st.integers(min_value=0))
def test_sum_of_window_consumption_equals_total_increase_across_roll_overs(
        bits: int, steps: list[tuple[int, int]], start: int) -> None:
    modulus = 2 ** bits
    register = start % modulus
    window = ConsumptionWindow(INFO, 60, Counter(rollover_bits=bits))
    now = T0
    closed = window.add(now, register, True)
    for gap, increase in steps:
        now += gap
        register = (register + increase) % modulus
        closed += window.add(now, register, True)
    closed += window.close_until(now + 60_000)
    total = sum(s.consumption or 0 for s in closed if isinstance(s, ConsumptionStats))
    assert total == sum(increase for _, increase in steps)
    assert all(not s.resets for s in closed if isinstance(s, ConsumptionStats))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=1, max_value=120_000), values), min_size=1, max_size=80),
       st.floats(min_value=0, max_value=100), st.floats(min_value=0, max_value=20),
       st.integers(min_value=1, max_value=3_600), st.integers(min_value=0, max_value=3_600))
def test_report_by_exception_never_lets_the_published_value_stray_beyond_the_deadband_for_longer_than_max_silence(
        sequence: list[tuple[int, float]], deadband: float, percent: float, silence: int, interval: int) -> None:
    rule = ReportByException(Reporting(deadband=deadband, deadband_percent=percent, max_silence=silence,
                                       min_interval=min(interval, silence)))
    now = T0
    for gap, value in sequence:
        now += gap
        band = rule.deadband()  # the band around the value published so far
        published_now = rule.should_publish(value, Quality.GOOD, now)
        last = rule.last_published
        assert last is not None
        last_value, last_time = last
        if published_now:
            assert last_value == value and last_time == now
        else:
            # Held back: within the band of the last published value, or not silent for max_silence yet.
            assert isinstance(last_value, float)
            assert abs(value - last_value) <= band or now - last_time < silence * 1000


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([16, 32]), st.integers(min_value=1, max_value=10_000),
       st.lists(st.tuples(gaps, st.floats(min_value=0, max_value=1)), min_size=1, max_size=80),
       st.integers(min_value=0))
def test_a_register_growing_within_its_plausible_rate_is_never_taken_for_reset(
        bits: int, per_hour: int, steps: list[tuple[int, float]], start: int) -> None:
    modulus = 2 ** bits
    register = start % modulus
    window = ConsumptionWindow(INFO, 60, Counter(rollover_bits=bits, max_per_hour=per_hour))
    now = T0
    closed = window.add(now, register, True)
    total = 0
    for gap, share in steps:
        now += gap
        increase = min(int(share * per_hour * gap / 3_600_000), modulus // 2 - 1)  # never beyond the rate
        total += increase
        register = (register + increase) % modulus
        closed += window.add(now, register, True)
    closed += window.close_until(now + 60_000)
    assert sum(s.consumption or 0 for s in closed if isinstance(s, ConsumptionStats)) == total
    assert all(not s.resets for s in closed if isinstance(s, ConsumptionStats))
