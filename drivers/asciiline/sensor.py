"""An ASCII line device: polled (send `request`, take the first matching line) or pushing lines unasked.

Lines that do not match the pattern, or are not text in the configured
encoding, are counted as malformed and skipped; a polled device still has its
timeout to send a matching one. A group that did not take part in the match, or
a number that does not parse, makes that point bad (decode-error).

A pushing device is served by a listener task; the scheduler's reads only check
it. Whatever stops the listener (the port failing, or the sink raising) is
raised by the next read as a DriverError, so the scheduler reopens the link and
subscribes again instead of waiting forever for lines nobody listens to.
"""

from __future__ import annotations

import asyncio
import logging
import re

from drivers.asciiline.config import AsciiLineDevice
from drivers.serial.bus import Bus
from drivers.serial.device import BusDevice, PushSink
from drivers.serial.frames import NEED_MORE, Accepted, NeedMore, Outcome, Rejected, Rejection
from gateway.model.devices import DeviceBase
from gateway.model.driver import DriverError
from gateway.model.readings import Quality, Reason, Sample, Value

log = logging.getLogger(__name__)

_LONGEST_LINE = 4096  # bytes without a terminator are noise past this
_PUSH_READ_WAIT = 60.0  # seconds one wait for pushed bytes lasts (the loop simply waits again)


class AsciiLineSensor(BusDevice):
    def __init__(self, device: DeviceBase) -> None:
        super().__init__()
        if not isinstance(device, AsciiLineDevice):
            raise ValueError(f"device {device.id} ({device.protocol}) is not an ASCII line device")
        self.device = device
        self._pattern = re.compile(device.pattern)
        self._terminator = device.terminator.encode(device.encoding)
        self._pusher: asyncio.Task[None] | None = None
        self._push_failure: DriverError | None = None  # why the listener stopped

    def describe(self) -> list[str]:
        if self.device.pushes:
            return ["listen for pushed lines"]
        return [f"send {self.device.request!r}, read one line"]

    async def read(self, bus: Bus) -> list[Sample]:
        device = self.device
        if device.pushes:
            if self._push_failure is not None:
                raise self._push_failure
            return []  # pushed samples go to the sink as lines arrive
        assert device.request is not None
        match = await bus.exchange(device.request.encode(device.encoding), self.parse_line, device.timeout,
                                   self.frames, what=f"request {device.request!r}")
        return self.samples(match)

    def parse_line(self, data: bytes) -> Outcome[re.Match[str]]:
        end = data.find(self._terminator)
        if end < 0:
            return NEED_MORE if len(data) < _LONGEST_LINE else Rejected(Rejection.NOISE, len(data))
        consumed = end + len(self._terminator)
        try:
            line = data[:end].decode(self.device.encoding).rstrip("\r")
        except UnicodeDecodeError:
            return Rejected(Rejection.MALFORMED, consumed)
        match = self._pattern.search(line)
        if match is None:
            return Rejected(Rejection.MALFORMED, consumed)
        return Accepted(match, consumed)

    def samples(self, match: re.Match[str]) -> list[Sample]:
        samples = []
        for point in self.device.points:
            text = match.group(point.group_name)
            value: Value
            if text is None:
                samples.append(Sample(point.name, None, Quality.BAD, Reason.DECODE_ERROR.value))
                continue
            if point.type == "text":
                value = text
            else:
                try:
                    value = float(text)
                except ValueError:
                    samples.append(Sample(point.name, None, Quality.BAD, Reason.DECODE_ERROR.value))
                    continue
            samples.append(Sample(point.name, value))
        return samples

    async def subscribe(self, bus: Bus, sink: PushSink) -> bool:
        if not self.device.pushes:
            return False
        self.unsubscribe()
        self._push_failure = None
        self._pusher = asyncio.create_task(self._listen(bus, sink), name=f"ascii push {self.device.id}")
        self._pusher.add_done_callback(self._listener_ended)
        return True

    def unsubscribe(self) -> None:
        if self._pusher is not None:
            self._pusher.cancel()
            self._pusher = None

    def _listener_ended(self, listener: asyncio.Task[None]) -> None:
        """Keep why the listener stopped for the next read (retrieving it, so asyncio does not log it)."""
        if listener.cancelled() or listener is not self._pusher:
            return  # unsubscribed: nothing failed
        failure = listener.exception()
        if isinstance(failure, DriverError):
            self._push_failure = failure  # the port failed (LinkLost)
            return
        # A bug behind the sink, not the device's doing: log it in full, then reconnect like any failure.
        log.error("device %s: the listener for pushed lines stopped", self.device.id, exc_info=failure)
        self._push_failure = DriverError(f"listener for pushed lines stopped: {failure!r}")

    async def _listen(self, bus: Bus, sink: PushSink) -> None:
        """Runs until cancelled or until reading or the sink raises (see `_listener_ended`)."""
        received = bytearray()
        while True:
            received += await bus.stream.read_some(_PUSH_READ_WAIT)
            while received:
                outcome = self.parse_line(bytes(received))
                if isinstance(outcome, NeedMore):
                    break
                del received[:outcome.consumed]
                if isinstance(outcome, Rejected):
                    self.frames.count(outcome)
                else:
                    self.frames.replies += 1
                    sink(self.samples(outcome.value))
