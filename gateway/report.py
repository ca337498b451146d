"""What the gateway reports about itself: the snapshot the status listener shows, and the health figures the
retained MQTT gateway status carries.

This is where the running parts are read (the publisher's counters, the buffer's depth, the links' device
states, the processor's active alarms, the latest readings); the status listener sees only the
`Snapshot` made here (gateway/status/snapshot.py), never the parts themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from gateway import __version__
from gateway.buffer import Buffer, BufferStats
from gateway.clock import ClockWatch
from gateway.gateway_alarms import GatewayAlarmEvent, GatewayAlarms
from gateway.links import DeviceStatus
from gateway.model.driver import Driver
from gateway.model.readings import Reading, now_ms
from gateway.processing import AlarmEvent, Processor
from gateway.publisher import Publisher
from gateway.status.process import STARTED_MS, CpuShare, LoopLag, cpu_seconds, rss_bytes
from gateway.status.snapshot import (
    AlarmRow,
    BufferDepth,
    DeviceRow,
    Panel,
    ProcessFigures,
    Snapshot,
    Uplink,
    ValueRow,
)


class LatestReadings:
    """Counts every reading, and (when `keep`) holds the latest one of each series (indicator, or
    `indicator[instance]` where the asset has it more than once) of each asset."""

    def __init__(self, keep: bool) -> None:
        self.count = 0
        self._keep = keep
        self._latest: dict[tuple[str, str], Reading] = {}

    def observe(self, readings: Sequence[Reading]) -> None:
        self.count += len(readings)
        if self._keep:
            for reading in readings:
                self._latest[(reading.asset.path(), reading.series)] = reading

    def rows(self) -> list[ValueRow]:
        return [_value_row(path, reading) for (path, _), reading in sorted(self._latest.items())]


class GatewayReport:
    def __init__(self, gateway_id: str, name: str, max_bytes: int, publisher: Publisher, buffer: Buffer,
                 processor: Processor, statuses: Callable[[], Iterable[DeviceStatus[Any]]],
                 drivers: Mapping[str, Driver[Any]], readings: LatestReadings, lag: LoopLag,
                 clock: ClockWatch, gateway_alarms: GatewayAlarms) -> None:
        self._gateway_id = gateway_id
        self._name = name
        self._max_bytes = max_bytes
        self._publisher = publisher
        self._buffer = buffer
        self._processor = processor
        self._statuses = statuses
        self._drivers = drivers
        self._readings = readings
        self._lag = lag
        self._clock = clock
        self._gateway_alarms = gateway_alarms
        self._cpu = CpuShare()
        self.running = False  # True between READY and STOPPING
        # Sections other parts add to the page (schedules, the audit log): each called for every snapshot.
        self.panels: list[Callable[[], Panel]] = []

    async def snapshot(self) -> Snapshot:
        depth = await self._buffer.depth()
        return Snapshot(
            gateway=self._gateway_id, name=self._name, version=__version__, time_ms=now_ms(),
            uplink=self._uplink(), buffer=self._depth(depth), process=self._process(),
            devices=tuple(self._device_row(status) for status in self._statuses()),
            values=tuple(self._readings.rows()), alarms=tuple(self._alarm_rows()),
            readings_total=self._readings.count, running=self.running, clock=self._clock.state.value,
            panels=tuple(panel() for panel in self.panels))

    async def mqtt_health(self) -> dict[str, object]:
        """The figures the retained gateway status carries besides its state (refreshed every minute)."""
        depth = await self._buffer.depth()
        now = now_ms()
        states: dict[str, int] = {}
        for status in self._statuses():
            states[status.state.value] = states.get(status.state.value, 0) + 1
        return {
            "time": now, "uptime_s": round((now - STARTED_MS) / 1000),
            "buffer": {"messages": depth.messages, "readings": depth.readings, "bytes": depth.bytes,
                       "oldest_age_s": _age_s(depth.oldest_created_ms, now),
                       "dropped_messages": depth.dropped_messages, "dropped_readings": depth.dropped_readings,
                       # the cap in force (the free space may hold it below buffer.max_bytes), and why the
                       # buffer drops readings now: size-cap, disk-full, or null
                       "cap_bytes": depth.cap_bytes, "dropping": depth.dropping},
            "process": {"rss_bytes": rss_bytes(), "cpu_seconds": round(cpu_seconds(), 2),
                        "cpu_percent": round(100 * self._cpu.since_last(), 1),
                        "loop_lag_max_s": round(self._lag.worst, 3)},
            "devices": states,
            "clock": self._clock.state.value,  # synchronised, unsynchronised, unknown or assumed (gateway/clock.py)
        }

    def _uplink(self) -> Uplink:
        publisher, stats = self._publisher, self._publisher.stats
        return Uplink(publisher.broker, publisher.connected, publisher.connected_since_ms,
                      None if publisher.connected else publisher.problem, stats.published, stats.bytes_published,
                      stats.entries_published, stats.acked, stats.reconnects, stats.connect_failures)

    def _depth(self, depth: BufferStats) -> BufferDepth:
        cap = depth.cap_bytes if depth.cap_bytes is not None else self._max_bytes  # the free space may hold it lower
        return BufferDepth(depth.messages, depth.readings, depth.bytes, cap, depth.oldest_created_ms,
                           depth.dropped_messages, depth.dropped_readings)

    def _process(self) -> ProcessFigures:
        return ProcessFigures(rss_bytes(), cpu_seconds(), STARTED_MS, self._lag.last, self._lag.worst)

    def _device_row(self, status: DeviceStatus[Any]) -> DeviceRow:
        device = status.device
        return DeviceRow(
            id=device.id, protocol=device.protocol,
            asset=f"{device.asset.domain}/{device.asset.site}/{device.asset.id}", state=status.state.value,
            since_ms=status.since_ms, reason=status.reason, message=status.message, polls=status.polls,
            failures=status.failures, consecutive_failures=status.consecutive_failures,
            poll_seconds=status.poll_seconds, last_poll_seconds=status.last_poll_seconds,
            counters=self._drivers[device.id].counters(device))

    def _alarm_rows(self) -> list[AlarmRow]:
        own = [_gateway_alarm_row(event) for event in self._gateway_alarms.active()]
        return own + [_alarm_row(event) for asset in self._processor.alarm_assets()
                      for event in self._processor.active_alarms(asset.asset)]


def _value_row(path: str, reading: Reading) -> ValueRow:
    value = reading.value
    if isinstance(value, float) and not math.isfinite(value):
        value = None  # JSON has no NaN; such a value is bad anyway
    return ValueRow(path, reading.series, value, reading.unit, reading.quality.value, reading.reason,
                    reading.source_time_ms, reading.receive_time_ms, reading.device, reading.point)


def _alarm_row(event: AlarmEvent) -> AlarmRow:
    return AlarmRow(event.asset.path(), event.alarm, event.level, event.severity.value, event.time_ms, event.device,
                    event.indicator, event.value, event.limit, event.unit, event.message)


def _gateway_alarm_row(event: GatewayAlarmEvent) -> AlarmRow:
    """One of the gateway's own alarms (its clock, its buffer): no asset, device or value."""
    return AlarmRow("gateway", event.alarm, "gateway", event.severity.value, event.time_ms, "", None, None, None,
                    None, event.message)


def _age_s(moment_ms: int | None, now: int) -> float | None:
    return None if moment_ms is None else round(max(0, now - moment_ms) / 1000, 1)
