"""One request at a time on a shared bus, with the silence the protocols require between frames.

`Bus.exchange()` is the whole life of one request:

1. wait until the bus has been quiet for the required silence (3.5 character
   times for Modbus RTU) since the last byte seen or sent;
2. throw away anything that arrived unasked in between (counted as noise);
3. send the request;
4. hand every byte received to the protocol's parser until it accepts a reply,
   dropping and counting what it rejects, and reading back an echo of the
   request (2-wire adapters without echo suppression) as an echo; a frame cut
   short (the line falls silent before its length is reached) is dropped once a
   complete frame follows it;
5. give up when the device's reply timeout has passed since the request left
   the wire: `NoReply`, a DriverError that leaves the link up, so the scheduler
   backs off that one device while the others on the bus carry on.

Time on the wire: writing to a port returns as soon as the bytes are queued,
but they take `len * char_time` to go out, so the reply timeout and the next
silence are counted from the estimated end of transmission.
"""

from __future__ import annotations

import asyncio
import time

from drivers.serial.frames import Accepted, FrameCounters, NeedMore, Rejected, Rejection, ReplyParser, T
from drivers.serial.stream import ByteStream
from gateway.model.driver import DriverError

_MIN_FRAME_GAP = 0.01


class NoReply(DriverError):
    """No valid reply within the device's timeout. Only that device is affected; the bus stays open."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "timeout", link_lost=False)


class Bus:
    def __init__(self, stream: ByteStream, char_time: float, silence: float) -> None:
        self.stream = stream
        self.char_time = char_time
        self.silence = silence
        self._quiet_since = 0.0  # monotonic time the last frame (sent or received) ended
        # Silence this long inside a frame means it was cut short (Modbus RTU's own rule, with a floor
        # for USB adapters and device servers that deliver a frame in bursts).
        self._frame_gap = max(silence, _MIN_FRAME_GAP)

    async def open(self) -> None:
        await self.stream.open()
        self._quiet_since = time.monotonic()

    def close(self) -> None:
        self.stream.close()

    async def exchange(self, request: bytes, parser: ReplyParser[T], reply_timeout: float, counters: FrameCounters,
                       *, what: str, expect_echo: bool = True) -> T:
        """Send `request` and return the value of the reply `parser` accepts.

        `expect_echo=False` for requests whose genuine reply is identical to the
        request (Modbus write single coil/register), which must not be taken for an echo.
        Raises NoReply, or LinkLost when the port is gone.
        """
        await self._keep_silence()
        stale = self.stream.take_pending()
        if stale:
            counters.noise_bytes += len(stale)
        counters.requests += 1
        await self.stream.write(request)
        sent = time.monotonic() + len(request) * self.char_time
        self._quiet_since = sent
        deadline = sent + reply_timeout
        rx_before = self.stream.last_rx
        received = bytearray()
        quiet = False
        try:
            while True:
                result = _take_reply(received, request if expect_echo else b"", parser, counters, quiet)
                if result is not None:
                    counters.replies += 1
                    if received:  # bytes after the reply: not ours to keep
                        counters.noise_bytes += len(received)
                    return result.value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                chunk = await self.stream.read_some(min(remaining, self._frame_gap))
                quiet = not chunk  # the line fell silent: an incomplete frame will not be completed
                received += chunk
        finally:
            if self.stream.last_rx != rx_before:
                # A reply proves our request has left the wire; the bus is quiet from its last byte on.
                self._quiet_since = self.stream.last_rx
        counters.timeouts += 1
        if received:
            counters.partial_frames += 1
            raise NoReply(f"{what}: incomplete reply within {reply_timeout:g} s ({len(received)} bytes: "
                          f"{bytes(received[:32]).hex(' ')})")
        raise NoReply(f"{what}: no reply within {reply_timeout:g} s")

    async def _keep_silence(self) -> None:
        quiet_since = max(self._quiet_since, self.stream.last_rx)
        wait = quiet_since + self.silence - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # the protocol's required gap, not a synchronisation stand-in


def _later_frame(data: bytes, parser: ReplyParser[T]) -> int | None:
    """Where in `data` the next complete frame starts (a reply, or one to reject), if any does after byte 0."""
    for start in range(1, len(data)):
        outcome = parser(data[start:])
        if isinstance(outcome, Accepted) or (isinstance(outcome, Rejected) and outcome.kind is not Rejection.NOISE):
            return start
    return None


def _take_reply(received: bytearray, request: bytes, parser: ReplyParser[T],
                counters: FrameCounters, line_quiet: bool = True) -> Accepted[T] | None:
    """Consume rejected bytes from the front of `received`; return the accepted reply, if complete.

    An incomplete frame at the front is dropped as partial only once the line is quiet and a
    complete frame follows it (scanning for one on every byte would cost the CPU dearly).
    """
    while received:
        if request:
            if received.startswith(request):
                del received[:len(request)]
                counters.count(Rejected(Rejection.ECHO, len(request)))
                continue
            if request.startswith(received):
                return None  # may be an echo still arriving (or a reply starting alike): wait
        outcome = parser(bytes(received))
        if isinstance(outcome, NeedMore):
            later = _later_frame(bytes(received), parser) if line_quiet else None
            if later is None:
                return None
            # A frame cut short (its length promises bytes that never came) with a whole frame after it.
            del received[:later]
            counters.count(Rejected(Rejection.PARTIAL, later))
            continue
        consumed = max(1, outcome.consumed)  # always progress, whatever a parser says
        del received[:consumed]
        if isinstance(outcome, Rejected):
            counters.count(Rejected(outcome.kind, consumed))
            continue
        return outcome
    return None
