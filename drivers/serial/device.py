"""What the bus driver needs from each protocol that runs on a shared bus: one `BusDevice` per configured device.

A protocol registers its BusDevice class (drivers/__init__.py); the bus driver
(driver.py) hosts one per device on the bus and never imports a protocol itself.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Generic

from drivers.serial.bus import Bus
from drivers.serial.frames import FrameCounters
from gateway.model.driver import D, LinkContext, WriteRefused
from gateway.model.readings import Sample, Value

PushSink = Callable[[Sequence[Sample]], None]


@dataclasses.dataclass
class ReplyCounters:
    """Per device: accepted replies that still gave bad samples (named as Modbus TCP's counters are)."""

    exception_replies: int = 0  # the device refused (Modbus exception, abnormal meter reply)
    decode_errors: int = 0  # point values that could not be decoded from a reply


class BusDevice(abc.ABC, Generic[D]):
    """One device on a shared bus. Called by the bus driver only, one call at a time."""

    def __init__(self, device: D) -> None:
        self.device = device
        self.frames = FrameCounters()
        self.replies = ReplyCounters()

    def join(self, members: Sequence[BusDevice[Any]], link: str, context: LinkContext | None) -> None:
        """Called once by the bus driver with every device on the link (this one too), before any poll: a
        protocol whose devices share state on one link (a Modbus unit modelled as several devices) finds its
        peers here, and may keep files in `context.state_dir` (None: a driver made without a context,
        which keeps nothing)."""

    @abc.abstractmethod
    async def read(self, bus: Bus) -> list[Sample]:
        """One poll: bad samples for what the device refused or garbled; NoReply / LinkLost for silence."""

    async def write(self, bus: Bus, point: str, value: Value) -> Value:
        """Write one writable point and return what the device reads back for it (see Driver.write)."""
        raise WriteRefused(f"protocol {self.device.protocol} cannot write; point {point!r} of device "
                           f"{self.device.id} is read only")

    async def listen(self, bus: Bus, sink: PushSink) -> None:
        """For a device that pushes (`device.pushes`): hand its samples to `sink` until the bus fails (LinkLost)."""
        raise NotImplementedError(f"protocol {self.device.protocol} does not push")

    def describe(self) -> list[str]:
        return []

    def counters(self) -> dict[str, int]:
        """Everything counted for this device, for its status."""
        return {**dataclasses.asdict(self.frames), **dataclasses.asdict(self.replies)}
