"""The contract every protocol driver fulfils.

A driver owns one physical link (a TCP connection, a serial port) and the
devices behind it. The scheduler calls it from exactly one task, so a driver
never has two requests outstanding on its link and needs no locking.
Protocols register in drivers/__init__.py (see drivers/registry.py).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.model.devices import DeviceBase
from gateway.model.readings import Sample, Value


class DriverError(Exception):
    """The link or the device failed as a whole; every point of the affected devices is bad.

    `reason` is the short, stable reason put on the readings; the message is for the log.
    `link_lost` tells the scheduler to close the link and connect again before the
    next request; False when only one device behind a healthy link failed.
    """

    def __init__(self, message: str, reason: str = "communication-failure", link_lost: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.link_lost = link_lost


class WriteRefused(Exception):
    """A write to a point that is not declared writable, or that the protocol cannot write."""


SampleSink = Callable[[DeviceBase, Sequence[Sample]], None]


class Driver(abc.ABC):
    """One physical link and the devices configured on it."""

    # Where a driver may keep files of its own (OPC-UA client certificates); set by the composition root.
    state_dir: Path | None = None

    def __init__(self, devices: Sequence[DeviceBase]) -> None:
        self.devices = list(devices)

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the link. Raises DriverError when it cannot."""

    @abc.abstractmethod
    async def read(self, device: DeviceBase) -> list[Sample]:
        """Read every point of one device in as few requests as the protocol allows.

        A point that cannot be read or decoded comes back as a bad-quality sample;
        DriverError means the device (or the link) did not answer at all.
        """

    async def write(self, device: DeviceBase, point: str, value: Value) -> None:
        raise WriteRefused(f"protocol {device.protocol} does not support writes")

    async def subscribe(self, device: DeviceBase, sink: SampleSink) -> bool:
        """Push-capable drivers start delivering samples to `sink` and return True; pollers return False."""
        return False

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the link. Never raises for a link that is already broken."""

    def device_counters(self, device: DeviceBase) -> dict[str, int]:
        """Protocol counters of one device (requests, exception replies, rejected frames ...) for its status."""
        return {}

    def describe_requests(self, device: DeviceBase) -> list[str]:
        """Human-readable list of the requests one poll of `device` makes (for `municipal-gateway plan`)."""
        return [f"read {len(device.points)} points"]
