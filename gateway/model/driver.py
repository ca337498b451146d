"""The contract every protocol driver fulfils.

A driver owns one physical link (a TCP connection, a serial port, an OPC-UA
session) and the devices configured on it. The gateway runs each link in a task
group of its own (gateway/links.py): one task makes every request on the link,
one at a time, so a driver never has two requests outstanding and needs no
locking; on a link whose devices push, a second task listens.

A driver plays one role or both:

- a **poller** answers `read(device)` with one batch of samples of that device;
- a **pusher** delivers, in `run(sink)`, the samples of the devices that push
  (`device.pushes`: an OPC-UA subscription, a sensor sending lines unasked)
  until the link is lost, and then returns or raises `DriverError`.

Both can `write(device, point, value)` to a point declared writable: the driver's value (the gateway has
checked it against the point's declared limits and inverted the point's transform), written, then read back.
The gateway calls it from the link's request task, so a write never overlaps a poll. A driver is
generic over its protocol's device model, so it sees its own configuration
type. Protocols register in drivers/__init__.py (see drivers/registry.py).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from gateway.model.devices import DeviceBase
from gateway.model.readings import Sample, Value

D = TypeVar("D", bound=DeviceBase)

DEFAULT_STATE_DIR = Path("/var/lib/municipal-gateway")


class DriverError(Exception):
    """The link or the device failed as a whole; every point of the affected devices is bad.

    `reason` is the short, stable reason put on the readings; the message is for the log.
    `link_lost` tells the gateway to close the link and open it again; False when only
    one device behind a healthy link failed (a silent unit behind a Modbus gateway).
    """

    def __init__(self, message: str, reason: str = "communication-failure", link_lost: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.link_lost = link_lost


class WriteRefused(Exception):
    """A write that never reached the device: the point is not declared writable, the protocol cannot write,
    or the value cannot be represented in the point's type. `reason` is short and stable (README)."""

    def __init__(self, message: str, reason: str = "not-writable") -> None:
        super().__init__(message)
        self.reason = reason


def _unit_unknown(device: str, point: str) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class LinkContext:
    """What the gateway lends every driver."""

    state_dir: Path = DEFAULT_STATE_DIR  # where a driver may keep files of its own (OPC-UA certificates)
    # unit_of(device id, point name): the unit the point's values are taken in (its own `unit`, else its
    # indicator's), for a driver that can compare it with what the device says (OPC-UA EngineeringUnits).
    unit_of: Callable[[str, str], str | None] = _unit_unknown


class Driver(abc.ABC, Generic[D]):
    """One physical link and the devices configured on it."""

    def __init__(self, devices: Sequence[D], context: LinkContext | None = None) -> None:
        if not devices:
            raise ValueError(f"{type(self).__name__} needs at least one device")
        self.devices: tuple[D, ...] = tuple(devices)
        self.context = context or LinkContext()

    @abc.abstractmethod
    async def open(self) -> None:
        """Open the link. Raises DriverError when it cannot."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the link. Never raises for a link that is already broken."""

    async def write(self, device: D, point: str, value: Value) -> Value:
        """Write `value` to `point` of `device` and return what the device reads back for it, in the driver's
        own terms (as `read` gives it). Raises WriteRefused before sending anything it cannot write, and
        DriverError when the device or the link fails (a device's refusal with `link_lost=False`)."""
        raise WriteRefused(f"protocol {device.protocol} cannot write; point {point!r} of device {device.id} "
                           "is read only")

    def counters(self, device: D) -> dict[str, int]:
        """Protocol counters of one device (requests, exception replies, rejected frames ...) for its status."""
        return {}

    def describe(self, device: D) -> list[str]:
        """What one poll of `device` asks of it, one line per request (for `municipal-gateway plan`)."""
        return [f"read {len(device.points)} points"]


class Poller(Driver[D]):
    @abc.abstractmethod
    async def read(self, device: D) -> list[Sample]:
        """Read every point of one device in as few requests as the protocol allows.

        A point that cannot be read or decoded comes back as a bad-quality sample;
        DriverError means the device (or the link) did not answer at all.
        """


PushSink = Callable[[D, Sequence[Sample]], None]


class Pusher(Driver[D]):
    @abc.abstractmethod
    async def run(self, sink: PushSink[D]) -> None:
        """Deliver the samples of every device that pushes to `sink`, as they arrive, until the link is lost.

        Returns or raises DriverError once the link is gone (keep-alive found it dead, the
        port closed); the gateway then reports those devices failing and opens the link again.
        """
