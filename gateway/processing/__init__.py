"""Processing: what the gateway makes of readings before they are buffered (docs/processing.md).

    readings of a device ──► per series: report by exception ─► data topic
                                         windows / counters   ─► stats topic
                                         alarms               ─► alarm topic (+ retained active alarms)
                         ──► derived indicators of the asset, processed the same way

The pipeline calls `process` for every poll, `failed` for a poll without answer
and `tick` about once a second, so windows close and alarm delays run out even
when no reading arrives. All time comes from the injected clock (tests control it).
A device whose points have no rules costs one supervision update per poll.

Given an alarm file, the active alarms survive a restart (memory.py): those still
configured start out raised, with their first `since`, so the first fresh reading
either keeps one (no new event) or clears it; `restart_events` clears the others.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.clock import Jump
from gateway.model.catalogue import Indicator, Quantification
from gateway.model.devices import DeviceBase
from gateway.model.readings import AssetRef, Quality, Reading, now_ms
from gateway.model.resolved import ResolvedAsset, ResolvedDevice
from gateway.model.rules import Processing, Reporting
from gateway.processing.alarms import CLEARED, RAISED, AlarmEvent, DeviceSupervisor, Supervision, ThresholdAlarm
from gateway.processing.counters import ConsumptionStats, ConsumptionWindow
from gateway.processing.derived import ExpressionRule, NightMinimumRule
from gateway.processing.exception import ReportByException
from gateway.processing.memory import AlarmMemory
from gateway.processing.windows import AlignedWindow, SeriesInfo, StatisticsWindow, WindowStats

__all__ = ["AlarmEvent", "ConsumptionStats", "Output", "Processor", "Supervision", "WindowStats"]

Statistics = WindowStats | ConsumptionStats
# A window is closed by the clock this long after its end, so a poll answered just after the boundary still counts.
CLOSE_GRACE_MS = 2_000


@dataclass(slots=True)
class Output:
    """What one call produced, in the order it happened."""

    readings: list[Reading] = field(default_factory=list)  # to publish on the data topic
    statistics: list[tuple[AssetRef, Statistics]] = field(default_factory=list)
    events: list[AlarmEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.readings or self.statistics or self.events)


class _Series:
    """The rules of one indicator of one asset.

    A series of a device that pushes (an OPC-UA subscription) hears of a value only when it changes, so it
    keeps its last reading and publishes it again when it has been silent for `heartbeat` seconds: the
    reporting rule's max_silence, or the device's poll interval when the indicator has no reporting rule.
    """

    __slots__ = ("alarms", "asset", "last", "pushed", "reporting", "windows")

    def __init__(self, asset: AssetRef, device: str, indicator: Indicator, rules: Processing, hold_ms: float,
                 heartbeat: float | None = None) -> None:
        self.asset = asset
        self.pushed = heartbeat is not None
        self.last: Reading | None = None
        reporting = rules.reporting
        if reporting is None and heartbeat is not None:
            reporting = Reporting(deadband=0.0, max_silence=heartbeat)
        self.reporting = ReportByException(reporting) if reporting is not None else None
        info = SeriesInfo(indicator.id, indicator.unit, indicator.unit_code)
        cumulative = indicator.quantified is Quantification.CUMULATIVE
        self.windows: list[AlignedWindow[WindowStats] | AlignedWindow[ConsumptionStats]] = [
            ConsumptionWindow(info, size, rules.counter) if cumulative else StatisticsWindow(info, size, hold_ms)
            for size in rules.windows or ()]
        self.alarms = [ThresholdAlarm(rule, asset, device, indicator.id, indicator.unit) for rule in rules.alarms or ()]

    def feed(self, reading: Reading, now: int, out: Output, answered: bool = True) -> None:
        """`answered`: the device delivered the reading (not a bad one the gateway made for a failed poll)."""
        quality = reading.quality
        # Windows place a sample by when the gateway got it: a device's source time may be that of the last
        # change (OPC-UA), hours old for a steady value, which would file every sample into a closed window.
        for window in self.windows:
            for closed in window.add(reading.receive_time_ms, reading.value, quality is Quality.GOOD, answered):
                out.statistics.append((self.asset, closed))
        usable = quality is not Quality.BAD
        for alarm in self.alarms:
            event = alarm.update(reading.value, usable, now)
            if event is not None:
                out.events.append(event)
        if self.pushed:
            self.last = reading
        if self.reporting is None or self.reporting.should_publish(reading.value, quality, now):
            out.readings.append(reading)

    def heartbeat(self, now: int) -> Reading | None:
        """The last reading of a pushing device again, when it is due: still its current value, received now."""
        last = self.last
        if last is None or self.reporting is None or not self.reporting.heartbeat_due(now):
            return None
        self.reporting.should_publish(last.value, last.quality, now)
        return dataclasses.replace(last, receive_time_ms=now)

    def clock_jumped(self, jump: Jump, out: Output) -> None:
        """The clock stepped: open windows close at the jump; kept times move with the clock."""
        for window in self.windows:
            closed = window.interrupt(jump.before_ms, jump.delta_ms)
            if closed is not None:
                out.statistics.append((self.asset, closed))
        for alarm in self.alarms:
            alarm.shift(jump.delta_ms)
        if self.reporting is not None:
            self.reporting.shift(jump.delta_ms)

    def tick(self, now: int, out: Output) -> None:
        for window in self.windows:
            for closed in window.close_until(now - CLOSE_GRACE_MS):
                out.statistics.append((self.asset, closed))
        for alarm in self.alarms:
            event = alarm.tick(now)
            if event is not None:
                out.events.append(event)


class _Asset:
    """Derived indicators of one asset and the latest readings they are computed from."""

    def __init__(self, asset: AssetRef) -> None:
        self.asset = asset
        self.latest: dict[str, Reading] = {}
        self.inputs: set[str] = set()
        self.expressions: list[tuple[ExpressionRule, _Series | None]] = []
        self.nights: list[tuple[NightMinimumRule, _Series | None]] = []

    def feed(self, readings: Iterable[Reading], now: int, out: Output, answered: bool = True) -> None:
        """`answered`: false for the bad readings of a failed poll (what is derived from them counts as failed)."""
        changed = set()
        for reading in readings:
            if reading.indicator in self.inputs:
                self.latest[reading.indicator] = reading
                changed.add(reading.indicator)
                for night, series in self.nights:
                    if reading.indicator in night.inputs:
                        self._emit(night.feed(reading), series, now, out, answered)
        if not changed:
            return
        for rule, series in self.expressions:  # in declaration order, so one may use an earlier one's result
            if changed & rule.inputs:
                result = rule.compute(self.latest, now)
                if result is not None:
                    self.latest[rule.indicator] = result
                    changed.add(rule.indicator)
                    self._emit([result], series, now, out, answered)

    def tick(self, now: int, out: Output) -> None:
        for night, series in self.nights:
            self._emit(night.tick(now - CLOSE_GRACE_MS), series, now, out)
        for series in self.series():
            series.tick(now, out)

    def series(self) -> list[_Series]:
        return [s for _, s in [*self.expressions, *self.nights] if s is not None]

    def clock_jumped(self, jump: Jump) -> None:
        # The inputs were read the same time ago as before the step (so max_age judges them as before).
        self.latest = {name: dataclasses.replace(reading, receive_time_ms=reading.receive_time_ms + jump.delta_ms)
                       for name, reading in self.latest.items()}
        for night, _ in self.nights:
            night.clock_jumped(jump.before_ms, jump.delta_ms)

    @staticmethod
    def _emit(results: list[Reading], series: _Series | None, now: int, out: Output, answered: bool = True) -> None:
        for result in results:
            if series is None:
                out.readings.append(result)
            else:
                series.feed(result, now, out, answered)


class _Device:
    __slots__ = ("asset", "passthrough", "series", "state", "supervisor")

    def __init__(self, asset: _Asset, series: dict[str, _Series], supervisor: DeviceSupervisor | None,
                 feeds_derived: bool) -> None:
        self.asset = asset
        self.series = series
        self.supervisor = supervisor
        self.passthrough = not series and not feeds_derived


class Processor:
    def __init__(self, assets: Sequence[ResolvedAsset],
                 supervision: Mapping[str, Supervision | None] | None = None,
                 clock: Callable[[], int] = now_ms, alarm_file: Path | None = None) -> None:
        """`supervision` by device id (None: not supervised; absent: the default for the device);
        `alarm_file`: where the active alarms are kept across restarts (None: they are not)."""
        self._clock = clock
        self._assets: dict[str, _Asset] = {}
        self._devices: dict[str, _Device] = {}
        self._active: dict[str, dict[str, AlarmEvent]] = {}  # asset id -> alarm id -> the event that raised it
        start = clock()
        for resolved in assets:
            asset = self._assets.setdefault(resolved.ref.asset, _Asset(resolved.ref))
            for device in resolved.devices:
                self._add_device(asset, device, (supervision or {}).get(device.id, _DEFAULT), start)
            if resolved.derived:
                self._add_derived(asset, resolved)
        self._memory = AlarmMemory(alarm_file) if alarm_file is not None else None
        self._restart_events: list[AlarmEvent] = []
        if self._memory is not None:
            self._restore(self._memory.recall(), start)

    # -- the three entry points ------------------------------------------------------------------------------

    def process(self, device_id: str, readings: Sequence[Reading]) -> Output:
        """Readings of one successful poll (or one batch a pushing device sent)."""
        any_good = any(reading.quality is Quality.GOOD for reading in readings)
        return self._handle(device_id, readings, True, lambda supervisor, now: supervisor.answered(now, any_good))

    def failed(self, device_id: str, reason: str, readings: Sequence[Reading]) -> Output:
        """The bad readings the gateway made for a poll that got no answer (they are not counted as samples)."""
        return self._handle(device_id, readings, False, lambda supervisor, now: supervisor.failed(reason, now))

    def _handle(self, device_id: str, readings: Sequence[Reading], answered: bool,
                supervise: Callable[[DeviceSupervisor, int], list[AlarmEvent]]) -> Output:
        now = self._clock()
        device = self._devices[device_id]
        out = Output()
        if device.supervisor is not None:
            out.events.extend(supervise(device.supervisor, now))
        if device.passthrough:
            out.readings = list(readings)
        else:
            self._feed(device, readings, now, out, answered)
        self._track(out.events)
        return out

    def tick(self) -> Output:
        """Close windows that have ended and run out alarm delays and supervision timers."""
        now = self._clock()
        out = Output()
        for device in self._devices.values():
            beats = [beat for series in device.series.values() if (beat := series.heartbeat(now)) is not None]
            if beats:  # published, and fresh inputs for the asset's derived indicators
                out.readings.extend(beats)
                device.asset.feed(beats, now, out)
            for series in device.series.values():
                series.tick(now, out)
            if device.supervisor is not None:
                out.events.extend(device.supervisor.tick(now))
        for asset in self._assets.values():
            asset.tick(now, out)
        self._track(out.events)
        return out

    def clock_jumped(self, jump: Jump) -> Output:
        """The system clock stepped (gateway/clock.py): the windows open then are published as interrupted,
        and every time kept for a delay, a silence or a supervision moves with the clock, so a step of hours
        neither makes every device stale nor runs out every delay at once."""
        out = Output()
        for device in self._devices.values():
            for series in device.series.values():
                series.clock_jumped(jump, out)
            if device.supervisor is not None:
                device.supervisor.shift(jump.delta_ms)
        for asset in self._assets.values():
            asset.clock_jumped(jump)
            for series in asset.series():
                series.clock_jumped(jump, out)
        return out

    def restart_events(self) -> Output:
        """Once, at start: a clear for each alarm active before the restart whose rule (or device) is gone."""
        out = Output(events=self._restart_events)
        self._restart_events = []
        return out

    # -- alarm state -----------------------------------------------------------------------------------------

    def active_alarms(self, asset_id: str) -> list[AlarmEvent]:
        """The alarms of an asset that are raised now, each as the event that raised it, oldest first."""
        return sorted(self._active.get(asset_id, {}).values(), key=lambda e: e.time_ms)

    def alarm_assets(self) -> list[AssetRef]:
        """Assets that can have alarms (whose active-alarm state is worth publishing)."""
        assets = {d.asset.asset for d in self._devices.values() if d.supervisor is not None}
        assets.update(s.asset for s in self._all_series() if s.alarms)
        return sorted(assets, key=AssetRef.path)

    def _all_series(self) -> Iterable[_Series]:
        for device in self._devices.values():
            yield from device.series.values()
        for asset in self._assets.values():
            yield from asset.series()

    # -- internals -------------------------------------------------------------------------------------------

    def _feed(self, device: _Device, readings: Sequence[Reading], now: int, out: Output, answered: bool) -> None:
        for reading in readings:
            series = device.series.get(reading.point)
            if series is None:
                out.readings.append(reading)
            else:
                series.feed(reading, now, out, answered)
        device.asset.feed(readings, now, out, answered)

    def _track(self, events: list[AlarmEvent]) -> None:
        """Keep the active-alarm state in step with the events just produced, and remember it."""
        for event in events:
            active = self._active.setdefault(event.asset.asset, {})
            if event.event == RAISED:
                active[event.alarm] = event
            else:
                active.pop(event.alarm, None)
        if events and self._memory is not None:
            self._memory.remember(e for active in self._active.values() for e in active.values())

    def _restore(self, remembered: list[AlarmEvent], now: int) -> None:
        """Raise again, without an event, each remembered alarm that is still configured; clear the others."""
        restorers = self._restorers()
        for event in remembered:
            restore = restorers.get((event.asset.asset, event.alarm))
            if restore is None:
                self._restart_events.append(dataclasses.replace(
                    event, event=CLEARED, time_ms=now, value=None, message="the alarm is no longer configured"))
            else:
                restore()
                self._active.setdefault(event.asset.asset, {})[event.alarm] = event
        self._track(self._restart_events)

    def _restorers(self) -> dict[tuple[str, str], Callable[[], None]]:
        """(asset id, alarm id) -> what takes that alarm as raised, for every alarm that can be raised."""
        restorers: dict[tuple[str, str], Callable[[], None]] = {}
        for device in self._devices.values():
            supervisor = device.supervisor
            if supervisor is not None:
                for alarm_id in supervisor.alarm_ids():
                    restorers[(device.asset.asset.asset, alarm_id)] = functools.partial(supervisor.restore, alarm_id)
        for series in self._all_series():
            for alarm in series.alarms:
                restorers[(series.asset.asset, alarm.alarm_id)] = alarm.restore
        return restorers

    def _add_device(self, asset: _Asset, device: ResolvedDevice[DeviceBase], supervision: Supervision | object | None,
                    start: int) -> None:
        config = device.config
        hold = _hold_ms(config)
        heartbeat = config.poll_interval if config.pushes else None
        series = {point.name: _Series(asset.asset, device.id, point.indicator, point.rules, hold, heartbeat)
                  for point in device.points if not point.rules.is_empty or config.pushes}
        if supervision is _DEFAULT:
            supervision = Supervision.for_device(config)
        supervisor = (DeviceSupervisor(asset.asset, device.id, supervision, start)
                      if isinstance(supervision, Supervision) else None)
        self._devices[device.id] = _Device(asset, series, supervisor, feeds_derived=False)

    def _add_derived(self, asset: _Asset, resolved: ResolvedAsset) -> None:
        hold = max(_hold_ms(device.config) for device in resolved.devices)
        for derived in resolved.derived:
            indicator = derived.indicator
            series = None if derived.rules.is_empty else _Series(asset.asset, "gateway", indicator, derived.rules,
                                                                 hold)
            night_minimum = derived.definition.night_minimum
            if night_minimum is not None:
                night = NightMinimumRule(night_minimum, asset.asset, indicator, hold)
                asset.nights.append((night, series))
                asset.inputs |= night.inputs
            else:
                rule = ExpressionRule(derived, asset.asset)
                asset.expressions.append((rule, series))
                asset.inputs |= rule.inputs | {rule.indicator}
        for device in self._devices.values():
            if device.asset is asset:
                device.passthrough = False


_DEFAULT = object()


def _hold_ms(device: DeviceBase) -> float:
    """How long a sample stands for in statistics: three polls, so one missed poll leaves no gap; for a
    device that pushes, until the next sample (it sends changes only; losing it sends bad readings)."""
    if device.pushes:
        return math.inf
    return max(1_000, round(3 * device.poll_interval * 1000))
