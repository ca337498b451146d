"""Polling: one task per physical link, serving the devices on that link in turn.

Within a link, devices are polled earliest-due first, so never two requests
are outstanding on one link. Each device keeps its own schedule, anchored to
its first poll so it does not drift; a missed slot is skipped, not caught up.
A device that fails is retried with capped exponential back-off; its readings
go out with bad quality, and its state change is logged once. Links are
independent tasks, so a dead device never delays a device on another link.

Push devices (OPC-UA subscriptions): after every successful connect the poller
calls `driver.subscribe()` for each device; a device it accepts delivers its
samples through the sink from then on and is no longer polled. Instead, every
`PUSH_CHECK_INTERVAL` the poller awaits `driver.read()` on it, which for a
subscribed device makes no request: it returns the latest value of each point
once per poll interval (so steady values still feed windows and heartbeats) and
nothing in between, and raises DriverError once the driver's keep-alive has
found the link dead. That failure
is handled like a failed poll (bad readings, back-off, reconnect), and the next
successful connect subscribes again.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.model.devices import DeviceBase
from gateway.model.driver import Driver, DriverError
from gateway.model.readings import Sample, now_ms

log = logging.getLogger(__name__)

# How many request timeouts one whole poll may take before the link is deemed stuck.
_STUCK_POLL_FACTOR = 20
# Seconds between liveness checks of a subscribed device, and the first step of its reconnect back-off.
PUSH_CHECK_INTERVAL = 1.0


class DeviceState(enum.StrEnum):
    STARTING = "starting"
    ONLINE = "online"
    FAILING = "failing"


@dataclass
class DeviceStatus:
    device: DeviceBase
    state: DeviceState = DeviceState.STARTING
    since_ms: int = field(default_factory=now_ms)
    reason: str | None = None
    message: str | None = None
    consecutive_failures: int = 0
    polls: int = 0
    failures: int = 0
    next_due: float = 0.0  # monotonic seconds

    def as_dict(self, counters: dict[str, int] | None = None) -> dict[str, object]:
        """The device's status document; `counters` are the driver's protocol counters for it."""
        return {
            "device": self.device.id, "state": self.state.value, "since": self.since_ms,
            "reason": self.reason, "message": self.message,
            "consecutive_failures": self.consecutive_failures, "polls": self.polls, "failures": self.failures,
            "counters": counters or {},
        }


SamplesHandler = Callable[[DeviceBase, Sequence[Sample], int], None]
FailureHandler = Callable[[DeviceBase, str, int], None]
StatusHandler = Callable[[DeviceStatus], None]


class LinkPoller:
    """Owns one driver (one physical link) and polls the devices on it."""

    def __init__(self, name: str, driver: Driver, on_samples: SamplesHandler, on_failure: FailureHandler,
                 on_status: StatusHandler, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.driver = driver
        self.statuses = [DeviceStatus(device) for device in driver.devices]
        self._on_samples = on_samples
        self._on_failure = on_failure
        self._on_status = on_status
        self._clock = clock
        self._connected = False
        self._pushing: set[str] = set()  # devices subscribed on the current connection
        self._push_capable: set[str] = set()  # devices that ever accepted a subscription
        self._connection = 0  # counts connects, so a sink of an old connection goes quiet

    async def run(self) -> None:
        start = self._clock()
        for status in self.statuses:
            status.next_due = start
        try:
            while True:
                status = min(self.statuses, key=lambda s: s.next_due)
                delay = status.next_due - self._clock()
                if delay > 0:
                    await asyncio.sleep(delay)  # waiting for a schedule, not for an event
                await self._poll(status)
                _honour_cancellation()
        finally:
            await self._close()

    async def _poll(self, status: DeviceStatus) -> None:
        device = status.device
        started = self._clock()
        try:
            # A safety net only: drivers enforce the per-request timeout themselves.
            async with asyncio.timeout(device.timeout * _STUCK_POLL_FACTOR) as guard:
                if not self._connected:
                    await self.driver.connect()
                    self._connected = True
                    self._connection += 1
                    await self._subscribe_all()
                samples = await self.driver.read(device)
        except DriverError as exc:
            await self._failed(status, exc, started)
            return
        except TimeoutError:
            if not guard.expired():
                raise  # not our safety net: a driver let its own timeout escape, which is a bug to surface
            stuck = DriverError(f"poll took longer than {device.timeout * _STUCK_POLL_FACTOR:g} s", "timeout")
            await self._failed(status, stuck, started)
            return
        if device.id in self._pushing:
            if samples:
                self._on_samples(device, samples, now_ms())
            self._answering(status)
            status.next_due = self._clock() + PUSH_CHECK_INTERVAL
            return
        status.polls += 1
        self._on_samples(device, samples, now_ms())
        self._answering(status)
        status.next_due = _next_slot(status.next_due, device.poll_interval, self._clock())

    def _answering(self, status: DeviceStatus) -> None:
        if status.state is not DeviceState.ONLINE:
            if status.state is DeviceState.FAILING:
                log.info("device %s is answering again after %d failed attempts", status.device.id,
                         status.consecutive_failures)
            self._set_state(status, DeviceState.ONLINE, None, None)
        status.consecutive_failures = 0

    async def _subscribe_all(self) -> None:
        """Right after a connect: let every push-capable device start pushing on this connection."""
        connection = self._connection

        def sink(device: DeviceBase, samples: Sequence[Sample]) -> None:
            if connection == self._connection and self._connected:
                self._on_samples(device, samples, now_ms())

        for status in self.statuses:
            try:
                pushing = await self.driver.subscribe(status.device, sink)
            except DriverError as exc:
                if exc.link_lost:
                    raise
                await self._failed(status, exc, self._clock())
                continue
            if pushing:
                self._pushing.add(status.device.id)
                self._push_capable.add(status.device.id)
                status.polls += 1
                self._answering(status)
                status.next_due = self._clock() + PUSH_CHECK_INTERVAL

    async def _failed(self, status: DeviceStatus, error: DriverError, started: float) -> None:
        device = status.device
        status.failures += 1
        status.consecutive_failures += 1
        if error.link_lost:
            await self._close()
        self._on_failure(device, error.reason, now_ms())
        if status.state is not DeviceState.FAILING:
            log.warning("device %s failed: %s (%s); retrying with back-off", device.id, error, error.reason)
            self._set_state(status, DeviceState.FAILING, error.reason, str(error))
        else:
            log.debug("device %s still failing: %s", device.id, error)
        if device.id in self._push_capable:
            # A push device has no poll grid; it retries quickly at first so a restarted server is back in seconds.
            backoff = min(device.backoff_max, PUSH_CHECK_INTERVAL * 2 ** (status.consecutive_failures - 1))
        else:
            backoff = max(min(device.backoff_max, device.poll_interval * 2 ** (status.consecutive_failures - 1)),
                          device.poll_interval)
        status.next_due = max(started, self._clock()) + backoff

    def _set_state(self, status: DeviceStatus, state: DeviceState, reason: str | None, message: str | None) -> None:
        status.state, status.reason, status.message, status.since_ms = state, reason, message, now_ms()
        self._on_status(status)

    async def _close(self) -> None:
        if self._connected:
            self._connected = False
            self._pushing.clear()
            await self.driver.close()


def _honour_cancellation() -> None:
    """Raise CancelledError if this task was cancelled but a library swallowed it.

    pymodbus and asyncua catch the CancelledError of a connect in progress and
    report a failed connect instead; without this check a stopping gateway
    would go on polling and never stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _next_slot(previous_due: float, interval: float, now: float) -> float:
    """The next slot on the device's grid that is still in the future (skipping missed ones)."""
    due = previous_due + interval
    if due <= now:
        due += math.ceil((now - due) / interval + 1e-9) * interval
    return due
