"""What every frame parser on a shared bus answers, and the counters of rejected bytes.

A parser looks at the bytes received since the request went out and says one of:

- `NEED_MORE`: the start of something that may still become the reply.
- `Rejected(kind, consumed)`: the first `consumed` bytes are not the reply (noise,
  a bad checksum, an echo of the request, a reply from another address...).
- `Accepted(value, consumed)`: the first `consumed` bytes are the reply.

The bus drops rejected bytes, counts them by kind and asks again, so one
garbled frame never hides the valid frame behind it. Parsers never raise on
bad bytes. Pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class Rejection(enum.StrEnum):
    NOISE = "noise"  # bytes that start no frame (counted in bytes)
    PARTIAL = "partial"  # a frame start whose frame does not end where its length says
    BAD_CHECKSUM = "bad-checksum"
    ECHO = "echo"  # our own request read back (2-wire RS-485 adapters without echo suppression)
    FOREIGN = "foreign"  # a well-formed reply from another address
    MALFORMED = "malformed"  # a well-formed frame that is not an answer to this request


@dataclass(frozen=True, slots=True)
class NeedMore:
    pass


NEED_MORE = NeedMore()


@dataclass(frozen=True, slots=True)
class Rejected:
    kind: Rejection
    consumed: int


@dataclass(frozen=True, slots=True)
class Accepted(Generic[T]):
    value: T
    consumed: int


Outcome = NeedMore | Rejected | Accepted[T]
ReplyParser = Callable[[bytes], Outcome[T]]


@dataclass
class FrameCounters:
    """Per device: exchanges made, and what was received and thrown away during them."""

    requests: int = 0
    replies: int = 0
    timeouts: int = 0
    noise_bytes: int = 0
    partial_frames: int = 0
    bad_checksums: int = 0
    echoes: int = 0
    foreign_replies: int = 0
    malformed: int = 0

    def count(self, rejected: Rejected) -> None:
        match rejected.kind:
            case Rejection.NOISE:
                self.noise_bytes += rejected.consumed
            case Rejection.PARTIAL:
                self.partial_frames += 1
            case Rejection.BAD_CHECKSUM:
                self.bad_checksums += 1
            case Rejection.ECHO:
                self.echoes += 1
            case Rejection.FOREIGN:
                self.foreign_replies += 1
            case Rejection.MALFORMED:
                self.malformed += 1

    @property
    def rejected(self) -> int:
        """Rejections of every kind, noise counted once per byte."""
        return (self.noise_bytes + self.partial_frames + self.bad_checksums + self.echoes
                + self.foreign_replies + self.malformed)


# --- BCD, as both meter protocols use it: low byte first, two digits a byte ------------------------------

class BcdError(ValueError):
    """A nibble above 9 where a decimal digit was expected."""


def bcd_to_int(data: bytes) -> int:
    """Little-endian BCD bytes to an unsigned integer. Raises BcdError."""
    value = 0
    for byte in reversed(data):
        high, low = byte >> 4, byte & 0x0F
        if high > 9 or low > 9:
            raise BcdError(f"{byte:02X} is not a BCD byte")
        value = value * 100 + high * 10 + low
    return value


def int_to_bcd(value: int, size: int) -> bytes:
    """An unsigned integer as `size` little-endian BCD bytes. Raises ValueError when it does not fit."""
    if value < 0 or value >= 100 ** size:
        raise ValueError(f"{value} does not fit in {size} BCD bytes")
    out = bytearray()
    for _ in range(size):
        value, pair = divmod(value, 100)
        out.append((pair // 10) << 4 | pair % 10)
    return bytes(out)


def address_bytes(address: str) -> bytes:
    """A meter address as printed on its nameplate (e.g. "000000123456", "A" for wildcard digits)
    to the bytes on the wire: BCD, lowest byte first."""
    if len(address) % 2:
        raise ValueError(f"address {address!r} needs an even number of digits")
    return bytes(int(address[i:i + 2], 16) for i in range(0, len(address), 2))[::-1]


def address_text(raw: bytes) -> str:
    """The inverse of `address_bytes`."""
    return raw[::-1].hex().upper()


def checksum(data: bytes) -> int:
    """Sum of the bytes modulo 256 (CJ/T 188 and DL/T 645)."""
    return sum(data) & 0xFF


# --- the frame both meter protocols share: [FE ...] 68 ... L DATA CS 16 -----------------------------------

METER_WAKE_UP, METER_START, METER_END, METER_WILDCARD = 0xFE, 0x68, 0x16, 0xAA


def meter_frame_bytes(body: bytes, wake_up: int) -> bytes:
    """`body` (68 through DATA) on the wire: wake-up bytes before it, checksum and end byte after it."""
    return bytes([METER_WAKE_UP] * wake_up) + body + bytes([checksum(body), METER_END])


def find_meter_frame(data: bytes, header: int, second_start: int | None = None) -> Outcome[bytes]:
    """The frame at the start of `data` (wake-up bytes before it belong to it), or what to drop.

    `header` counts the bytes from the 68 through L (L is the last of them); `second_start` is
    where a protocol repeats 68 inside its header (DL/T 645). Accepts the frame's bytes from its
    68 through DATA, checksum and end byte checked.
    """
    start = 0
    while start < len(data) and data[start] == METER_WAKE_UP:
        start += 1
    if start == len(data):
        return NEED_MORE
    if data[start] != METER_START:
        return Rejected(Rejection.NOISE, start + 1)
    if len(data) - start < header:
        return NEED_MORE
    if second_start is not None and data[start + second_start] != METER_START:
        return Rejected(Rejection.NOISE, start + 1)  # a stray 68, not a frame header
    end = start + header + data[start + header - 1] + 2
    if len(data) < end:
        return NEED_MORE
    if data[end - 1] != METER_END:
        return Rejected(Rejection.PARTIAL, start + 1)
    if checksum(data[start:end - 2]) != data[end - 2]:
        return Rejected(Rejection.BAD_CHECKSUM, start + 1)
    return Accepted(bytes(data[start:end - 2]), end)


def address_matches(wanted: bytes, actual: bytes) -> bool:
    """Whether `actual` is the address asked for: equal, byte for byte, wherever `wanted` is not AA."""
    return len(wanted) == len(actual) and all(w in (METER_WILDCARD, a) for w, a in zip(wanted, actual, strict=True))


METER_REPLY, METER_ABNORMAL, METER_MORE_FRAMES, METER_FUNCTION = 0x80, 0x40, 0x20, 0x1F


class MeterControl:
    """The address and control byte of both meter protocols; control: bit 7 reply, bit 6 abnormal, bit 5 more
    frames, bits 4-0 the function. Mixed into each protocol's frame, which has the `address` and `control` fields."""

    __slots__ = ()
    address: bytes  # as on the wire, lowest byte first
    control: int

    @property
    def is_reply(self) -> bool:
        return bool(self.control & METER_REPLY)

    @property
    def abnormal(self) -> bool:
        return bool(self.control & METER_ABNORMAL)

    @property
    def function(self) -> int:
        return self.control & METER_FUNCTION


F = TypeVar("F", bound=MeterControl)


def meter_reply_parser(request: F, parse: Callable[[bytes], Outcome[F]], *, from_meter: Callable[[F], bool],
                       same_data: Callable[[F], bool]) -> ReplyParser[F]:
    """A parser accepting only the reply to `request`: a reply (not our request read back), `from_meter` asked,
    of the same function and, unless abnormal, with the `same_data` identifier."""

    def parse_reply(data: bytes) -> Outcome[F]:
        outcome = parse(data)
        if not isinstance(outcome, Accepted):
            return outcome
        frame = outcome.value
        if not frame.is_reply:
            return Rejected(Rejection.ECHO, outcome.consumed)  # a request on the bus: ours, read back
        if not from_meter(frame):
            return Rejected(Rejection.FOREIGN, outcome.consumed)
        if frame.function != request.function or (not frame.abnormal and not same_data(frame)):
            return Rejected(Rejection.MALFORMED, outcome.consumed)
        return outcome

    return parse_reply
