"""Consumption per window from a cumulative register (a totaliser, an energy meter).

The consumption of a window is the sum of the increases between consecutive good
readings that arrived in it. When the value goes backwards:
- if the register has a known width, wrapping forward is the shorter way (less
  than half the register), and, when the counter gives `max_per_hour`, the increase
  across the wrap is no more than that rate allows for the time since the register
  last changed, it rolled over: the increase is counted across the wrap;
- otherwise the meter was replaced or reset: the step counts as zero and is
  reported with the values before and after, never as a huge negative (or positive)
  consumption.
Without `max_per_hour` the width alone cannot tell a roll-over from a reset to a
small value from above half the register (a 16-bit register reset from 40,000 to 5
reads as 25,541 units through a wrap), so for narrow registers it should be given.
Mistaking a reset for a roll-over invents consumption; mistaking a roll-over for a
reset loses at most the little that wrapped, and lists it under `resets`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.model.readings import Value
from gateway.model.rules import Counter
from gateway.processing.windows import AlignedWindow, SeriesInfo


@dataclass(frozen=True, slots=True)
class CounterReset:
    time_ms: int
    before: float | int
    after: float | int

    def as_payload(self) -> dict[str, object]:
        return {"ts": self.time_ms, "before": self.before, "after": self.after}


@dataclass(frozen=True, slots=True)
class ConsumptionStats:
    indicator: str
    unit: str
    unit_code: str
    window_s: int
    start_ms: int
    end_ms: int
    count: int
    consumption: float | int | None  # None when no two good readings bracketed any of the window
    first: float | int | None
    last: float | int | None
    rollovers: int = 0
    resets: tuple[CounterReset, ...] = field(default_factory=tuple)
    failed: int = 0  # polls in the window the device did not answer
    interrupted: bool = False  # closed early by a jump of the clock

    def as_payload(self, seq: int) -> dict[str, object]:
        body: dict[str, object] = {
            "seq": seq, "indicator": self.indicator, "unit": self.unit, "unit_code": self.unit_code,
            "window": self.window_s, "start": self.start_ms, "end": self.end_ms,
            "consumption": self.consumption, "first": self.first, "last": self.last, "count": self.count,
            "failed": self.failed}
        if self.rollovers:
            body["rollovers"] = self.rollovers
        if self.resets:
            body["resets"] = [r.as_payload() for r in self.resets]
        if self.interrupted:
            body["interrupted"] = True
        return body


_MS_PER_HOUR = 3_600_000


class RegisterTracker:
    """Follows one cumulative register and turns each new value into an increase."""

    def __init__(self, counter: Counter | None) -> None:
        self._modulus = counter.modulus if counter is not None else None
        self._max_per_hour = counter.max_per_hour if counter is not None else None
        self.value: float | int | None = None  # ints stay ints: a 64-bit register does not fit a float
        # When the register last changed: a wrap's increase built up since then (a meter that updates its
        # register in steps may hold a value for many polls).
        self._changed_ms = 0

    def step(self, time_ms: int, value: float | int) -> tuple[float | int, bool, CounterReset | None]:
        """(increase, rolled over, reset) from the previous value to `value`."""
        previous, self.value = self.value, value
        since_change = time_ms - self._changed_ms
        if value != previous:
            self._changed_ms = time_ms
        if previous is None:
            return 0, False, None
        increase = value - previous
        if increase >= 0:
            return increase, False, None
        wrapped = self._across_wrap(increase, since_change)
        if wrapped is not None:
            return wrapped, True, None
        return 0, False, CounterReset(time_ms, previous, value)

    def shift(self, delta_ms: int) -> None:
        """The clock stepped: the register's last change happened the same time ago as before."""
        self._changed_ms += delta_ms

    def _across_wrap(self, increase: float | int, elapsed_ms: int) -> float | int | None:
        """The increase a backwards step means if the register rolled over, when that is plausible."""
        if self._modulus is None:
            return None
        wrapped = increase + self._modulus
        if wrapped >= self._modulus / 2:
            return None
        if self._max_per_hour is not None and wrapped > self._max_per_hour * elapsed_ms / _MS_PER_HOUR:
            return None
        return wrapped


class ConsumptionWindow(AlignedWindow[ConsumptionStats]):
    def __init__(self, info: SeriesInfo, size_s: int, counter: Counter | None) -> None:
        super().__init__(info, size_s)
        self._register = RegisterTracker(counter)
        self._consumption: float | int | None = None
        self._first: float | int | None = None
        self._rollovers = 0
        self._resets: list[CounterReset] = []

    def _open(self, start_ms: int) -> None:
        self._first = self._register.value
        self._consumption = None
        self._rollovers, self._resets = 0, []

    def _accumulate(self, time_ms: int, value: Value, good: bool) -> None:
        if not good or isinstance(value, bool) or not isinstance(value, int | float):
            return
        number = value
        had_baseline = self._register.value is not None
        increase, rolled, reset = self._register.step(time_ms, number)
        if self._first is None:
            self._first = number
        if had_baseline:
            self._consumption = (self._consumption or 0) + increase
        self._rollovers += rolled
        if reset is not None:
            self._resets.append(reset)

    def _close(self, end_ms: int, interrupted: bool = False) -> ConsumptionStats:
        info = self.info
        return ConsumptionStats(info.indicator, info.unit, info.unit_code, self.size_s, self.opened_ms, end_ms,
                                self.count, self._consumption, self._first, self._register.value,
                                self._rollovers, tuple(self._resets), self.failed, interrupted)

    def _shift(self, delta_ms: int) -> None:
        self._register.shift(delta_ms)
