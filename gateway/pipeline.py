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
from gateway.clock import ClockState, ClockWatch, Jump
from gateway.gateway_alarms import BUFFER_FULL, CLOCK_JUMPED, CLOCK_UNSYNCHRONISED, GatewayAlarmEvent, GatewayAlarms
from gateway.mapping import DeviceMapper
from gateway.model.readings import AssetRef, Reading, Sample, now_ms
from gateway.payload import encode_active_alarms, encode_alarm_events, encode_batch, encode_drops, encode_statistics
from gateway.processing import Output, Processor
from gateway.processing.derived import DERIVED_DEVICE
from gateway.tasks import commit_until_cancelled
from gateway.topics import Topics

ALARM_PRIORITY = 10  # buffer priority of alarm events; readings and statistics have 0
DROPS_PRIORITY = 20  # the announcement of what the buffer dropped: first out, never dropped itself
DROPS_PER_MESSAGE = 500
_UNTOLD = "untold"  # the buffer's dropping episode, before the first look
_T = TypeVar("_T")


class Pipeline:
    def __init__(self, gateway_id: str, topics: Topics, mappers: dict[str, DeviceMapper], buffer: Buffer,
                 processor: Processor | None = None,
                 on_active_alarms: Callable[[str, bytes], None] | None = None,
                 clock: ClockWatch | None = None, gateway_alarms: GatewayAlarms | None = None,
                 on_readings: Callable[[Sequence[Reading]], None] | None = None) -> None:
        """`on_active_alarms(topic, body)` publishes an asset's (or the gateway's) retained active-alarm state;
        `clock`: readings' time is flagged uncertain while it is, and its jumps reach the processor before
        the time after them is used; `gateway_alarms`: the gateway's own alarms (None: none kept); `on_readings`
        sees every reading as mapped (before report by exception holds any back) and every derived one."""
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
        # Each sees what `on_readings` is said to see (the status page's latest values, the command path's guards,
        # the lighting schedules' circuit states).
        self.observers: list[Callable[[Sequence[Reading]], None]] = [on_readings] if on_readings is not None else []
        self._last_commit_ms = now_ms()
        self._clock = clock
        self._dropping: str | None = _UNTOLD
        self._announcing: set[int] = set()  # drops (by first_seq) in an announcement not yet committed
        self._gateway_alarms = gateway_alarms if gateway_alarms is not None else GatewayAlarms(None)
        if clock is not None:
            clock.on_state.append(self._clock_state_changed)
            clock.on_jump.append(self._clock_jumped)

    async def making_progress(self, within_ms: int) -> bool:
        """Idle, or committed something in the last `within_ms` (for the watchdog)."""
        return self._idle.is_set() or now_ms() - self._last_commit_ms <= within_ms

    @property
    def buffer_dropping(self) -> str | None:
        """Why the buffer is dropping readings now (None when it is not)."""
        return self._buffer.dropping

    def submit(self, device_id: str, samples: Sequence[Sample], receive_time_ms: int) -> None:
        self._look_for_jump()
        mapper = self._mappers[device_id]
        readings = mapper.readings(samples, receive_time_ms)
        self._observe(readings)
        if self._processor is None:
            self._enqueue_readings(mapper.asset, readings)
        else:
            self._enqueue_output(self._processor.process(device_id, readings))

    def submit_failure(self, device_id: str, reason: str, receive_time_ms: int) -> None:
        self._look_for_jump()
        mapper = self._mappers[device_id]
        readings = mapper.failed(reason, receive_time_ms)
        self._observe(readings)
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
        self._look_for_jump()
        if self._processor is not None:
            self._enqueue_output(self._processor.tick())
        self._follow_buffer()

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
        self._announce_gateway_alarms()

    def set_gateway_alarm(self, alarm: str, active: bool, message: str = "") -> None:
        """Raise or clear one of the gateway's own alarms (an event only when it changes)."""
        event = self._gateway_alarms.update(alarm, active, now_ms(), message)
        if event is not None:
            self._enqueue_gateway_events([event])

    def _enqueue_gateway_events(self, events: list[GatewayAlarmEvent]) -> None:
        first_seq = self._buffer.allocate_sequence(len(events))
        body = encode_alarm_events(self._gateway_id, None, events, first_seq, self._time_uncertain)
        self._queue(Message(self._topics.gateway_alarm(), body, ALARM_PRIORITY, first_seq,
                            first_seq + len(events) - 1, now_ms()))
        self._announce_gateway_alarms()

    def _announce_gateway_alarms(self) -> None:
        if self._on_active_alarms is not None:
            body = encode_active_alarms(self._gateway_id, None, self._gateway_alarms.active(), now_ms())
            self._on_active_alarms(self._topics.gateway_active_alarms(), body)

    # -- the buffer's drops ----------------------------------------------------------------------------------

    def _follow_buffer(self) -> None:
        """Raise or clear buffer-full with the buffer's episode of dropping, and announce what it dropped (once a
        second at most: on a disk too full even for the announcement, it is tried again, not in a loop)."""
        dropping = self._buffer.dropping
        if dropping != self._dropping:
            self._dropping = dropping
            self.set_gateway_alarm(BUFFER_FULL, dropping is not None,
                                   f"the buffer drops its oldest readings ({dropping}); each range is announced "
                                   f"on {self._topics.gateway_dropped()}" if dropping else "")
        fresh = [d for d in self._buffer.unannounced if d.first_seq not in self._announcing]
        for start in range(0, len(fresh), DROPS_PER_MESSAGE):
            drops = fresh[start:start + DROPS_PER_MESSAGE]
            announces = tuple(d.first_seq for d in drops)
            self._announcing.update(announces)
            self._queue(Message(self._topics.gateway_dropped(), encode_drops(self._gateway_id, drops, now_ms()),
                                DROPS_PRIORITY, created_ms=now_ms(), announces=announces))

    # -- the clock -------------------------------------------------------------------------------------------

    @property
    def _time_uncertain(self) -> bool:
        return self._clock is not None and self._clock.uncertain

    def _look_for_jump(self) -> None:
        if self._clock is not None:
            self._clock.jumped()  # calls _clock_jumped first when it did

    def _clock_state_changed(self, state: ClockState) -> None:
        self.set_gateway_alarm(CLOCK_UNSYNCHRONISED, state is ClockState.UNSYNCHRONISED,
                               "the system clock is not synchronised: readings are flagged time_uncertain"
                               if state is ClockState.UNSYNCHRONISED else "")

    def _clock_jumped(self, jump: Jump) -> None:
        if self._processor is not None:
            self._enqueue_output(self._processor.clock_jumped(jump))
        if jump.worth_a_warning:
            self._enqueue_gateway_events([GatewayAlarms.occurred(CLOCK_JUMPED, jump.after_ms, jump.describe())])

    def _observe(self, readings: Sequence[Reading]) -> None:
        if readings:
            for observe in self.observers:
                observe(readings)

    def _enqueue_output(self, output: Output) -> None:
        # Derived readings; a device's own were seen as mapped (and a pushing device's heartbeats repeat them).
        if self.observers:
            self._observe([r for r in output.readings if r.device == DERIVED_DEVICE])
        for asset, events in _by_asset(output.events, lambda e: e.asset).items():
            first_seq = self._buffer.allocate_sequence(len(events))
            body = encode_alarm_events(self._gateway_id, asset, events, first_seq, self._time_uncertain)
            self._queue(Message(self._topics.alarm(asset), body, ALARM_PRIORITY, first_seq,
                                first_seq + len(events) - 1, now_ms()))
            self._announce_alarm_state(asset)
        for asset, readings in _by_asset(output.readings, lambda r: r.asset).items():
            self._enqueue_readings(asset, readings)
        if output.statistics:
            grouped = _by_asset(output.statistics, lambda pair: pair[0])
            for asset, pairs in grouped.items():
                first_seq = self._buffer.allocate_sequence(len(pairs))
                body = encode_statistics(self._gateway_id, asset, [w for _, w in pairs], first_seq,
                                         self._time_uncertain)
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
        body = encode_batch(self._gateway_id, asset, readings, first_seq, self._time_uncertain)
        self._queue(Message(self._topics.data(asset), body, 0, first_seq, first_seq + len(readings) - 1, now_ms()))

    def _queue(self, message: Message) -> None:
        self._pending.append(message)
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        """Commit queued messages until cancelled; on cancellation commit what is queued (what was read must
        still reach the disk), then stop."""
        await commit_until_cancelled(self._wake, self._commit_pending, lambda: bool(self._pending))

    async def _commit_pending(self) -> None:
        self._wake.clear()
        batch, self._pending = self._pending, []
        if batch:
            await self._buffer.commit(batch)
            self._last_commit_ms = now_ms()
            self.entries_committed += sum(m.entries for m in batch)
            # Told or not (a disk too full even for that), they are the buffer's to list again.
            self._announcing.difference_update(first for m in batch for first in m.announces)
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
