"""Windowed statistics, aligned to the wall clock (UTC): a 15-min window is 00:00-00:15, 00:15-00:30, ...

Between samples a value is taken to hold until the next sample (sample and hold),
but for at most `hold` (a few poll intervals), so a device that stops answering
does not keep its last value alive. Per window:

- min, max: over the values in force during the window, including the one carried in
  from before its start;
- mean: time-weighted over the good-quality time, so irregular samples count for the
  time they stood for;
- last: the last good value in force;
- count: samples the device delivered in the window (any quality); failed: the
  gateway's own bad samples for polls the device did not answer, which say that
  nothing was delivered (they end the value in force, but a window of a device
  that was offline throughout has count 0);
- good: the share of the window covered by good-quality values (0..1).
Booleans count as 0/1, so the mean of a state is the share of time it was true.

A window is closed by the first sample at or after its end, or by `close_until`
(called from the processor's clock), and then published as its own message.

When the system clock jumps (gateway/clock.py) the open window, aligned to the time
before the jump, is closed at the moment of the jump (as that clock showed it) and
published with `interrupted: true`, so what it holds (a meter's consumption above all)
is neither lost nor filed under the new time. The window the clock lands in begins at
the landing (its `start` is that moment, also `interrupted: true`, its good share of
the time it was open), and the windows after it are whole and aligned again. Nothing is
published for the span the clock skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.model.readings import Value

# At most this many windows are published at once; a longer gap means the clock jumped.
MAX_CATCH_UP = 100


@dataclass(frozen=True, slots=True)
class WindowStats:
    indicator: str
    unit: str
    unit_code: str
    window_s: int
    start_ms: int
    end_ms: int
    count: int
    good: float
    minimum: float | None = None
    maximum: float | None = None
    mean: float | None = None
    last: float | None = None
    failed: int = 0
    interrupted: bool = False  # closed early by a jump of the clock

    def as_payload(self, seq: int) -> dict[str, object]:
        body: dict[str, object] = {
            "seq": seq, "indicator": self.indicator, "unit": self.unit, "unit_code": self.unit_code,
            "window": self.window_s, "start": self.start_ms, "end": self.end_ms,
            "min": self.minimum, "max": self.maximum, "mean": self.mean, "last": self.last,
            "count": self.count, "failed": self.failed, "good": round(self.good, 4)}
        if self.interrupted:
            body["interrupted"] = True
        return body


def numeric(value: Value) -> float | None:
    """The value as a number for statistics (booleans as 0/1), or None when it has none."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    indicator: str
    unit: str
    unit_code: str


S = TypeVar("S")  # what a closed window gives: WindowStats, or ConsumptionStats for a counter


class AlignedWindow(Generic[S]):
    """Keeps the current window of one size for one series; subclasses say what is accumulated."""

    def __init__(self, info: SeriesInfo, size_s: int) -> None:
        self.info = info
        self.size_s = size_s
        self.size_ms = size_s * 1000
        self.start_ms: int | None = None  # of the open window; None until the first sample
        self.count = 0  # samples of the open window the device delivered
        self.failed = 0  # samples of the open window that stand for a poll without answer
        self.late = 0  # samples older than the open window, not counted
        self.skipped = 0  # empty windows not published after a jump in time
        # Where the open window really began when that is not its aligned start: the window in which the
        # clock stepped (it holds only what came after the step). The first sample after a step sets it.
        self.began_ms: int | None = None
        self._resume_ms: int | None = None  # the time a step landed on, until the next window opens

    @property
    def opened_ms(self) -> int:
        """The start the open window reports: its aligned start, or the step it began at."""
        assert self.start_ms is not None
        return self.start_ms if self.began_ms is None else self.began_ms

    @property
    def end_ms(self) -> int:
        assert self.start_ms is not None
        return self.start_ms + self.size_ms

    def add(self, time_ms: int, value: Value, good: bool, answered: bool = True) -> list[S]:
        """Account one sample (`answered`: delivered by the device, not made for a failed poll);
        the windows it closed, oldest first."""
        closed = self.close_until(time_ms)
        if self.start_ms is None:
            self._open_at(time_ms)
        elif time_ms < self.start_ms:
            self.late += 1
            return closed
        if answered:
            self.count += 1
        else:
            self.failed += 1
        self._accumulate(time_ms, value, good)
        return closed

    def close_until(self, now_ms: int) -> list[S]:
        """Close every window that has ended by `now_ms`.

        After a jump of the clock (or a device timestamp far in the future) the empty
        windows in between are skipped, not published one by one, past MAX_CATCH_UP.
        """
        closed: list[S] = []
        while self.start_ms is not None and self.end_ms <= now_ms:
            closed.append(self._close(self.end_ms, interrupted=self.began_ms is not None))
            self.count = self.failed = 0
            self.began_ms = None
            self.start_ms = self.end_ms
            if len(closed) >= MAX_CATCH_UP and self.end_ms <= now_ms:
                self.skipped += (now_ms - self.start_ms) // self.size_ms
                self.start_ms = now_ms - now_ms % self.size_ms
            self._open(self.start_ms)
        return closed

    def interrupt(self, jump_at_ms: int, delta_ms: int) -> S | None:
        """The clock stepped by `delta_ms` when it showed `jump_at_ms` (before the step): close the open
        window there (None when it holds nothing), and let the next sample open one in the new time."""
        closed = None
        if self.start_ms is not None and self.count + self.failed > 0 and jump_at_ms > self.opened_ms:
            closed = self._close(jump_at_ms, interrupted=True)
        self.start_ms = self.began_ms = None
        self.count = self.failed = 0
        self._resume_ms = jump_at_ms + delta_ms
        self._shift(delta_ms)
        return closed

    def _open_at(self, time_ms: int) -> None:
        """Open the window `time_ms` falls in; after a step of the clock it begins where the step landed."""
        self.start_ms = time_ms - time_ms % self.size_ms
        resume, self._resume_ms = self._resume_ms, None
        self.began_ms = resume if resume is not None and self.start_ms < resume <= time_ms else None
        self._open(self.opened_ms)

    def _shift(self, delta_ms: int) -> None:
        """Move the times kept across windows by the clock's step (subclasses keep some)."""

    def _open(self, start_ms: int) -> None:
        raise NotImplementedError

    def _accumulate(self, time_ms: int, value: Value, good: bool) -> None:
        raise NotImplementedError

    def _close(self, end_ms: int, interrupted: bool = False) -> S:
        raise NotImplementedError


class StatisticsWindow(AlignedWindow[WindowStats]):
    def __init__(self, info: SeriesInfo, size_s: int, hold_ms: float) -> None:
        super().__init__(info, size_s)
        self._hold_ms = hold_ms
        # The sample in force: its value (None when bad or not a number) and time.
        self._held: float | None = None
        self._held_ms = 0
        self._integrated_ms = 0  # time up to which the held value has been integrated
        self._weighted = 0.0
        self._good_ms = 0
        self._min: float | None = None
        self._max: float | None = None
        self._last: float | None = None

    def _open(self, start_ms: int) -> None:
        self._integrated_ms = start_ms
        self._weighted, self._good_ms = 0.0, 0
        carried = self._held if self._held_ms + self._hold_ms > start_ms else None
        self._min = self._max = self._last = carried

    def _integrate(self, until_ms: int) -> None:
        if self._held is not None:
            held_until = self._held_ms + self._hold_ms  # infinite for a device that pushes
            stop = until_ms if held_until >= until_ms else int(held_until)
            if stop > self._integrated_ms:
                span = stop - self._integrated_ms
                self._weighted += self._held * span
                self._good_ms += span
        self._integrated_ms = max(self._integrated_ms, until_ms)

    def _accumulate(self, time_ms: int, value: Value, good: bool) -> None:
        self._integrate(time_ms)
        number = numeric(value) if good else None
        self._held, self._held_ms = number, time_ms
        if number is not None:
            self._min = number if self._min is None else min(self._min, number)
            self._max = number if self._max is None else max(self._max, number)
            self._last = number

    def _close(self, end_ms: int, interrupted: bool = False) -> WindowStats:
        self._integrate(end_ms)
        mean = self._weighted / self._good_ms if self._good_ms else None
        if mean is not None and self._min is not None and self._max is not None:
            mean = min(max(mean, self._min), self._max)  # rounding must not push the mean outside [min, max]
        info = self.info
        start = self.opened_ms
        return WindowStats(info.indicator, info.unit, info.unit_code, self.size_s, start, end_ms,
                           self.count, self._good_ms / (end_ms - start), self._min, self._max, mean,
                           self._last, self.failed, interrupted)

    def _shift(self, delta_ms: int) -> None:
        self._held_ms += delta_ms  # the value in force stays in force across the step

    def interval_mean(self) -> float | None:
        """Mean of the open window so far (for callers that close windows themselves)."""
        return self._weighted / self._good_ms if self._good_ms else None
