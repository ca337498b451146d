"""Polling: one task per physical link, serving the devices on that link in turn.

Within a link, devices are polled earliest-due first, so never two requests
are outstanding on one link. Each device keeps its own schedule, anchored to
its first poll so it does not drift; a missed slot is skipped, not caught up.
A device that fails is retried with capped exponential back-off; its readings
go out with bad quality, and its state change is logged once. Links are
independent tasks, so a dead device never delays a device on another link.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from drivers.base import Driver, DriverError
from gateway.config.models import DeviceBase
from gateway.model import Sample, now_ms

log = logging.getLogger(__name__)

# How many request timeouts one whole poll may take before the link is deemed stuck.
_STUCK_POLL_FACTOR = 20


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

    def as_dict(self) -> dict[str, object]:
        return {
            "device": self.device.id, "state": self.state.value, "since": self.since_ms,
            "reason": self.reason, "message": self.message,
            "consecutive_failures": self.consecutive_failures, "polls": self.polls, "failures": self.failures,
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
        finally:
            await self._close()

    async def _poll(self, status: DeviceStatus) -> None:
        device = status.device
        started = self._clock()
        try:
            if not self._connected:
                await self.driver.connect()
                self._connected = True
            # A safety net only: drivers enforce the per-request timeout themselves.
            async with asyncio.timeout(device.timeout * _STUCK_POLL_FACTOR):
                samples = await self.driver.read(device)
        except DriverError as exc:
            await self._failed(status, exc, started)
            return
        except TimeoutError:
            stuck = DriverError(f"poll took longer than {device.timeout * _STUCK_POLL_FACTOR:g} s", "timeout")
            await self._failed(status, stuck, started)
            return
        status.polls += 1
        self._on_samples(device, samples, now_ms())
        if status.state is not DeviceState.ONLINE:
            if status.state is DeviceState.FAILING:
                log.info("device %s is answering again after %d failed polls", device.id, status.consecutive_failures)
            self._set_state(status, DeviceState.ONLINE, None, None)
        status.consecutive_failures = 0
        status.next_due = _next_slot(status.next_due, device.poll_interval, self._clock())

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
        backoff = min(device.backoff_max, device.poll_interval * 2 ** (status.consecutive_failures - 1))
        status.next_due = max(started, self._clock()) + max(backoff, device.poll_interval)

    def _set_state(self, status: DeviceStatus, state: DeviceState, reason: str | None, message: str | None) -> None:
        status.state, status.reason, status.message, status.since_ms = state, reason, message, now_ms()
        self._on_status(status)

    async def _close(self) -> None:
        if self._connected:
            self._connected = False
            await self.driver.close()


def _next_slot(previous_due: float, interval: float, now: float) -> float:
    """The next slot on the device's grid that is still in the future (skipping missed ones)."""
    due = previous_due + interval
    if due <= now:
        due += math.ceil((now - due) / interval + 1e-9) * interval
    return due
