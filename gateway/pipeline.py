"""From samples to committed messages: mapping → processing → encoding → buffer.

Drivers hand samples over synchronously (`submit`); the pipeline maps them to
readings, lets the processor (if any) filter them and add window statistics
and alarm events, encodes one message per asset and kind, and queues it. A single
writer task commits everything queued so far in one transaction (group
commit), so a burst of polls costs one disk sync, not one each.
Alarm events go in with a higher buffer priority: they are sent first after an
outage and dropped last when the buffer is full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

from gateway.buffer import Buffer, Message
from gateway.mapping import DeviceMapper
from gateway.model.readings import AssetRef, Reading, Sample, now_ms
from gateway.payload import encode_active_alarms, encode_alarm_events, encode_batch, encode_statistics
from gateway.processing import Output, Processor
from gateway.topics import Topics

ALARM_PRIORITY = 10  # buffer priority of alarm events; readings and statistics have 0
_T = TypeVar("_T")


class Pipeline:
    def __init__(self, gateway_id: str, topics: Topics, mappers: dict[str, DeviceMapper], buffer: Buffer,
                 processor: Processor | None = None,
                 on_active_alarms: Callable[[str, bytes], None] | None = None) -> None:
        """`on_active_alarms(topic, body)` publishes an asset's retained active-alarm state."""
        self._gateway_id = gateway_id
        self._topics = topics
        self._mappers = mappers
        self._buffer = buffer
        self._processor = processor
        self._on_active_alarms = on_active_alarms
        self._pending: list[Message] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.entries_committed = 0  # readings, statistics and alarm events: each took one seq number
        # Called with every poll's mapped readings (the command path's guards read the asset's latest values).
        self.observers: list[Callable[[Sequence[Reading]], None]] = []

    def submit(self, device_id: str, samples: Sequence[Sample], receive_time_ms: int) -> None:
        mapper = self._mappers[device_id]
        readings = mapper.readings(samples, receive_time_ms)
        for observe in self.observers:
            observe(readings)
        if self._processor is None:
            self._enqueue_readings(mapper.asset, readings)
        else:
            self._enqueue_output(self._processor.process(device_id, readings))

    def submit_failure(self, device_id: str, reason: str, receive_time_ms: int) -> None:
        mapper = self._mappers[device_id]
        readings = mapper.failed(reason, receive_time_ms)
        for observe in self.observers:
            observe(readings)
        if self._processor is None:
            self._enqueue_readings(mapper.asset, readings)
        else:
            self._enqueue_output(self._processor.failed(device_id, reason, readings))

    def submit_event(self, topic: str, encode: Callable[[int], bytes], priority: int = ALARM_PRIORITY) -> None:
        """Queue one message of another part (a command's audit record), numbered in the gateway's sequence:
        `encode(seq)` makes its body. Alarm priority by default: sent first after an outage, dropped last."""
        seq = self._buffer.allocate_sequence(1)
        self._queue(Message(topic, encode(seq), priority, seq, seq, now_ms()))

    def tick(self) -> None:
        """Let the processor close windows and run out alarm delays; called about once a second."""
        if self._processor is not None:
            self._enqueue_output(self._processor.tick())

    async def run_clock(self, interval: float = 1.0) -> None:
        """Call `tick` every `interval` seconds until cancelled (a timer, not a synchronisation)."""
        while True:
            await asyncio.sleep(interval)
            self.tick()

    def announce_alarm_states(self) -> None:
        """At start-up: queue the clears of alarms that are no longer configured, and publish the (retained)
        active alarms of every asset that can have alarms, as kept across the restart."""
        if self._processor is not None:
            self._enqueue_output(self._processor.restart_events())
            for asset in self._processor.alarm_assets():
                self._announce_alarm_state(asset)

    def _enqueue_output(self, output: Output) -> None:
        for asset, events in _by_asset(output.events, lambda e: e.asset).items():
            first_seq = self._buffer.allocate_sequence(len(events))
            body = encode_alarm_events(self._gateway_id, asset, events, first_seq)
            self._queue(Message(self._topics.alarm(asset), body, ALARM_PRIORITY, first_seq,
                                first_seq + len(events) - 1, now_ms()))
            self._announce_alarm_state(asset)
        for asset, readings in _by_asset(output.readings, lambda r: r.asset).items():
            self._enqueue_readings(asset, readings)
        if output.statistics:
            grouped = _by_asset(output.statistics, lambda pair: pair[0])
            for asset, pairs in grouped.items():
                first_seq = self._buffer.allocate_sequence(len(pairs))
                body = encode_statistics(self._gateway_id, asset, [w for _, w in pairs], first_seq)
                self._queue(Message(self._topics.stats(asset), body, 0, first_seq, first_seq + len(pairs) - 1,
                                    now_ms()))

    def _announce_alarm_state(self, asset: AssetRef) -> None:
        if self._on_active_alarms is not None and self._processor is not None:
            active = self._processor.active_alarms(asset.asset)
            body = encode_active_alarms(self._gateway_id, asset, active, now_ms())
            self._on_active_alarms(self._topics.active_alarms(asset), body)

    def _enqueue_readings(self, asset: AssetRef, readings: list[Reading]) -> None:
        if not readings:
            return
        first_seq = self._buffer.allocate_sequence(len(readings))
        body = encode_batch(self._gateway_id, asset, readings, first_seq)
        self._queue(Message(self._topics.data(asset), body, 0, first_seq, first_seq + len(readings) - 1, now_ms()))

    def _queue(self, message: Message) -> None:
        self._pending.append(message)
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        """Commit queued messages until cancelled; on cancellation commit what is queued, then stop."""
        try:
            while True:
                await self._wake.wait()
                await self._commit_pending()
        finally:
            if self._pending:
                # Shutting down: what was read must still reach the disk.
                await asyncio.shield(self._commit_pending())

    async def _commit_pending(self) -> None:
        self._wake.clear()
        batch, self._pending = self._pending, []
        if batch:
            await self._buffer.commit(batch)
            self.entries_committed += sum(m.last_seq - m.first_seq + 1 for m in batch)
        if not self._pending:
            self._idle.set()

    async def drained(self) -> None:
        """Wait until everything submitted so far is committed."""
        await self._idle.wait()


def _by_asset(items: Sequence[_T], asset_of: Callable[[_T], AssetRef]) -> dict[AssetRef, list[_T]]:
    """Items grouped by asset, keeping their order (a poll's output almost always has one asset)."""
    grouped: dict[AssetRef, list[_T]] = {}
    for item in items:
        grouped.setdefault(asset_of(item), []).append(item)
    return grouped
