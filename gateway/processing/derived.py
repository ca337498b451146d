"""Derived indicators: computed at the gateway from other indicators of the same asset.

An expression rule is evaluated whenever one of its inputs arrives, from the latest
reading of every input (whichever device of the asset supplies it). The result is
bad when an input is bad or the expression has no value (division by zero),
uncertain when an input is uncertain or older than `max_age`, and its time is the
newest input's source time.

The minimum night flow takes the time-weighted mean of an indicator over each
interval (e.g. 15 min) inside a nightly window (e.g. 02:00-04:00 local time) and
publishes the lowest once per night, when the window ends.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.model.catalogue import Indicator
from gateway.model.expression import EvaluationError
from gateway.model.readings import AssetRef, Quality, Reading, Reason, Value
from gateway.model.resolved import ResolvedDerived
from gateway.model.rules import NightMinimum
from gateway.processing.windows import SeriesInfo, StatisticsWindow, WindowStats

CALCULATION_ERROR = Reason.CALCULATION.value
DERIVED_DEVICE = "gateway"  # what derived readings name as their source device
_MINUTES_PER_DAY = 24 * 60
_QUALITY_ORDER = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}


class ExpressionRule:
    def __init__(self, derived: ResolvedDerived, asset: AssetRef) -> None:
        indicator = derived.indicator
        assert derived.expression is not None, "an expression rule is made for a derived expression"
        self.indicator = indicator.id
        self._expression = derived.expression
        self.inputs = self._expression.names
        self._asset = asset
        self._unit, self._unit_code = indicator.unit, indicator.unit_code
        self._range = indicator.range
        self._max_age_ms = round(derived.definition.max_age * 1000)
        self._point = f"derived:{indicator.id}"

    def compute(self, latest: Mapping[str, Reading], now_ms: int) -> Reading | None:
        """The derived reading from the latest inputs; None until every input has been seen once."""
        inputs = [latest.get(name) for name in self.inputs]
        if any(r is None for r in inputs):
            return None
        present = [r for r in inputs if r is not None]
        newest = max(r.source_time_ms for r in present)
        worst = max(present, key=lambda r: _QUALITY_ORDER[r.quality])
        if worst.quality is Quality.BAD:
            return self._reading(None, Quality.BAD, worst.reason, newest, now_ms)
        try:
            value = self._expression.evaluate({r.indicator: r.value for r in present})
        except EvaluationError:
            return self._reading(None, Quality.BAD, CALCULATION_ERROR, newest, now_ms)
        quality: Quality = worst.quality
        reason = worst.reason
        if isinstance(value, float) and value.is_integer() and self._unit == "state":
            value = int(value)
        if self._out_of_range(value):
            quality, reason = Quality.BAD, Reason.OUT_OF_RANGE.value
        elif any(now_ms - r.receive_time_ms > self._max_age_ms for r in present):  # how long since it was read
            quality, reason = Quality.UNCERTAIN, Reason.STALE.value
        return self._reading(value, quality, reason, newest, now_ms)

    def _out_of_range(self, value: object) -> bool:
        if self._range is None or isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return not self._range[0] <= value <= self._range[1]

    def _reading(self, value: Value, quality: Quality, reason: str | None,
                 source_ms: int, now_ms: int) -> Reading:
        return Reading(self._asset, self.indicator, value, self._unit, self._unit_code, quality, reason,
                       source_ms, now_ms, DERIVED_DEVICE, self._point)


class NightMinimumRule:
    """The lowest interval mean of one indicator inside a nightly window."""

    def __init__(self, definition: NightMinimum, asset: AssetRef, indicator: Indicator, hold_ms: float) -> None:
        self.indicator = indicator.id
        self.inputs = frozenset({definition.of})
        self._night = definition
        self._asset = asset
        self._unit, self._unit_code = indicator.unit, indicator.unit_code
        self._intervals = StatisticsWindow(SeriesInfo(definition.of, indicator.unit, indicator.unit_code),
                                           definition.interval, hold_ms)
        self._length = (definition.end_minute - definition.start_minute) % _MINUTES_PER_DAY
        self._lowest: float | None = None
        self._missing = 0  # intervals of this night without a mean

    def feed(self, reading: Reading) -> list[Reading]:
        closed = self._intervals.add(reading.receive_time_ms, reading.value, reading.quality is not Quality.BAD)
        return self._consume(closed, reading.receive_time_ms)

    def tick(self, now_ms: int) -> list[Reading]:
        return self._consume(self._intervals.close_until(now_ms), now_ms)

    def clock_jumped(self, jump_at_ms: int, delta_ms: int) -> None:
        """The clock stepped: the interval open then is dropped (the night's minimum is of whole intervals)."""
        self._intervals.interrupt(jump_at_ms, delta_ms)

    def _local_minute(self, utc_ms: int) -> int:
        return (utc_ms // 60_000 + self._night.offset_minutes) % _MINUTES_PER_DAY

    def _consume(self, closed: list[WindowStats], now_ms: int) -> list[Reading]:
        results = []
        for stats in closed:
            if (self._local_minute(stats.start_ms) - self._night.start_minute) % _MINUTES_PER_DAY >= self._length:
                continue  # an interval outside the night
            if stats.mean is None:
                self._missing += 1
            else:
                self._lowest = stats.mean if self._lowest is None else min(self._lowest, stats.mean)
            if self._local_minute(stats.end_ms) == self._night.end_minute:
                results.append(self._result(stats.end_ms, now_ms))
        return results

    def _result(self, night_end_ms: int, now_ms: int) -> Reading:
        value, missing = self._lowest, self._missing
        self._lowest, self._missing = None, 0
        if value is None:
            quality, reason = Quality.BAD, Reason.STALE.value
        elif missing:
            quality, reason = Quality.UNCERTAIN, Reason.STALE.value
        else:
            quality, reason = Quality.GOOD, None
        return Reading(self._asset, self.indicator, value, self._unit, self._unit_code, quality, reason,
                       night_end_ms, now_ms, DERIVED_DEVICE, f"derived:{self.indicator}")
