"""An ASCII line device: polled (send `request`, take the first matching line) or pushing lines unasked.

Lines that do not match the pattern, or are not text in the configured
encoding, are counted as malformed and skipped; a polled device still has its
timeout to send a matching one. A group that did not take part in the match, or
a number that does not parse, makes that point bad (decode-error).

A pushing device is listened to by `listen()`, which the gateway runs in the
link's task group: it ends (LinkLost) when the port fails, and the gateway then
reopens the port and listens again.
"""

from __future__ import annotations

import logging
import re

from drivers.asciiline.config import AsciiLine
from drivers.serial.bus import Bus
from drivers.serial.device import BusDevice, PushSink
from drivers.serial.frames import NEED_MORE, Accepted, NeedMore, Outcome, Rejected, Rejection
from gateway.model.readings import Quality, Reason, Sample, Value

log = logging.getLogger(__name__)

_LONGEST_LINE = 4096  # bytes without a terminator are noise past this
_PUSH_READ_WAIT = 60.0  # seconds one wait for pushed bytes lasts (the loop simply waits again)


class AsciiLineSensor(BusDevice[AsciiLine]):
    def __init__(self, device: AsciiLine) -> None:
        super().__init__(device)
        self._pattern = re.compile(device.pattern)
        self._terminator = device.terminator.encode(device.encoding)

    def describe(self) -> list[str]:
        if self.device.pushes:
            return ["listen for pushed lines"]
        return [f"send {self.device.request!r}, read one line"]

    async def read(self, bus: Bus) -> list[Sample]:
        device = self.device
        if device.request is None:
            raise NotImplementedError(f"device {device.id} pushes its lines; it is listened to, not polled")
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

    async def listen(self, bus: Bus, sink: PushSink) -> None:
        """Hand the samples of every matching line to `sink`, until the port fails (LinkLost)."""
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
