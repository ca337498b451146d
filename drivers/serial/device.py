"""What the bus driver needs from each protocol: one `BusDevice` per configured device."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence

from drivers.serial.bus import Bus
from drivers.serial.frames import FrameCounters
from gateway.model.driver import WriteRefused
from gateway.model.readings import Sample, Value

PushSink = Callable[[Sequence[Sample]], None]


@dataclasses.dataclass
class ReplyCounters:
    """Per device: accepted replies that still gave bad samples (named as Modbus TCP's counters are)."""

    exception_replies: int = 0  # the device refused (Modbus exception, abnormal meter reply)
    decode_errors: int = 0  # point values that could not be decoded from a reply


class BusDevice(abc.ABC):
    """One device on a shared bus. Called by the bus driver only, one call at a time."""

    def __init__(self) -> None:
        self.frames = FrameCounters()
        self.replies = ReplyCounters()

    @abc.abstractmethod
    async def read(self, bus: Bus) -> list[Sample]:
        """One poll: bad samples for what the device refused or garbled; NoReply / LinkLost for silence."""

    async def write(self, bus: Bus, point: str, value: Value) -> None:
        raise WriteRefused("this protocol does not support writes")

    async def subscribe(self, bus: Bus, sink: PushSink) -> bool:
        """Start pushing samples to `sink` (devices that send unasked); False for polled devices."""
        return False

    def unsubscribe(self) -> None:  # noqa: B027 - optional: only push devices have something to stop
        """Stop pushing (the link is closing)."""

    def describe(self) -> list[str]:
        return []

    def counters(self) -> dict[str, int]:
        """Everything counted for this device, for its status."""
        return {**dataclasses.asdict(self.frames), **dataclasses.asdict(self.replies)}
