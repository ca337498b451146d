"""DL/T 645-2007 frames: building requests, finding and checking replies, data formats.

    [FE FE FE FE] 68 A0..A5 68 C L DATA CS 16

A0..A5 is the address (BCD, lowest byte first; AA..AA reads the address of a
lone meter, 99..99 is broadcast). Every DATA byte travels +33H (mod 256); the
`Frame` here holds DATA with the offset already removed. CS is the byte sum
from the first 68 through DATA (as sent). C: bit 7 reply, bit 6 abnormal
(DATA is then one error byte), bit 5 follow-up frame, bits 4-0 function.
Data identifiers are 4 bytes DI3..DI0, sent DI0 first.

Pure: no I/O. Parsers never raise on bad bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drivers.serial.frames import (
    NEED_MORE,
    Accepted,
    BcdError,
    Outcome,
    Rejected,
    Rejection,
    ReplyParser,
    bcd_to_int,
    checksum,
    int_to_bcd,
)

START, END, WAKE_UP, WILDCARD, OFFSET = 0x68, 0x16, 0xFE, 0xAA, 0x33
HEADER = 10  # 68 A0..A5 68 C L
ADDRESS_SIZE = 6

DIRECTION_REPLY, ABNORMAL, FOLLOW_UP, FUNCTION_MASK = 0x80, 0x40, 0x20, 0x1F
READ_DATA, READ_ADDRESS = 0x11, 0x13

ERROR_NAMES = {0x01: "other error", 0x02: "no requested data", 0x04: "password error / unauthorised",
               0x08: "baud rate cannot be changed", 0x10: "annual time zones exceeded",
               0x20: "daily time slots exceeded", 0x40: "tariffs exceeded"}


@dataclass(frozen=True, slots=True)
class Frame:
    address: bytes  # 6 bytes, as on the wire (lowest first)
    control: int
    data: bytes  # without the +33H offset

    @property
    def is_reply(self) -> bool:
        return bool(self.control & DIRECTION_REPLY)

    @property
    def abnormal(self) -> bool:
        return bool(self.control & ABNORMAL)

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK

    @property
    def data_id(self) -> int | None:
        return int.from_bytes(self.data[:4], "little") if len(self.data) >= 4 else None

    @property
    def error(self) -> int | None:
        """The error byte of an abnormal reply."""
        return self.data[0] if self.abnormal and self.data else None


def encode(frame: Frame, wake_up: int = 4) -> bytes:
    if len(frame.address) != ADDRESS_SIZE:
        raise ValueError(f"a DL/T 645 address is {ADDRESS_SIZE} bytes, got {len(frame.address)}")
    if len(frame.data) > 255:
        raise ValueError("DATA is longer than 255 bytes")
    shifted = bytes((byte + OFFSET) & 0xFF for byte in frame.data)
    body = bytes([START, *frame.address, START, frame.control, len(shifted), *shifted])
    return bytes([WAKE_UP] * wake_up) + body + bytes([checksum(body), END])


def read_request(address: bytes, data_id: int) -> Frame:
    return Frame(address, READ_DATA, data_id.to_bytes(4, "little"))


def read_address_request() -> Frame:
    return Frame(bytes([WILDCARD] * ADDRESS_SIZE), READ_ADDRESS, b"")


def parse(data: bytes) -> Outcome[Frame]:
    """The frame at the start of `data` (wake-up bytes before it belong to it), or what to drop."""
    start = 0
    while start < len(data) and data[start] == WAKE_UP:
        start += 1
    if start == len(data):
        return NEED_MORE
    if data[start] != START:
        return Rejected(Rejection.NOISE, start + 1)
    if len(data) - start < HEADER:
        return NEED_MORE
    if data[start + 7] != START:
        return Rejected(Rejection.NOISE, start + 1)  # a stray 68, not a frame header
    end = start + HEADER + data[start + 9] + 2
    if len(data) < end:
        return NEED_MORE
    if data[end - 1] != END:
        return Rejected(Rejection.PARTIAL, start + 1)
    if checksum(data[start:end - 2]) != data[end - 2]:
        return Rejected(Rejection.BAD_CHECKSUM, start + 1)
    unshifted = bytes((byte - OFFSET) & 0xFF for byte in data[start + 10:end - 2])
    return Accepted(Frame(bytes(data[start + 1:start + 7]), data[start + 8], unshifted), end)


def reply_parser(request: Frame) -> ReplyParser[Frame]:
    """A parser accepting only the reply to `request`: same function, from the addressed meter
    (any meter for a wildcard request), carrying the requested identifier unless abnormal."""

    def parse_reply(data: bytes) -> Outcome[Frame]:
        outcome = parse(data)
        if not isinstance(outcome, Accepted):
            return outcome
        frame = outcome.value
        if not frame.is_reply:
            return Rejected(Rejection.ECHO, outcome.consumed)
        if not all(w in (WILDCARD, a) for w, a in zip(request.address, frame.address, strict=True)):
            return Rejected(Rejection.FOREIGN, outcome.consumed)
        if frame.function != request.function:
            return Rejected(Rejection.MALFORMED, outcome.consumed)
        if request.function == READ_DATA and not frame.abnormal and frame.data_id != request.data_id:
            return Rejected(Rejection.MALFORMED, outcome.consumed)
        return outcome

    return parse_reply


# --- data formats ----------------------------------------------------------------------------------------

class FormatError(ValueError):
    """Bytes that are not a value of the identifier's format."""


@dataclass(frozen=True, slots=True)
class DataFormat:
    """A BCD number of `size` bytes (lowest first) with `decimals` decimal places, in `unit`.
    Signed formats use the top bit of the last byte as the sign (DL/T 645-2007 appendix)."""

    size: int
    decimals: int
    unit: str
    signed: bool = False

    @property
    def limit(self) -> float:
        """The largest magnitude the format can hold."""
        digits = self.size * 2 - (1 if self.signed else 0)
        return (10.0 ** digits - 1) / 10.0 ** self.decimals




# Identifier patterns (hex digits, "x" any) of the common readings, first match wins.
_COMMON_FORMATS: tuple[tuple[str, DataFormat], ...] = (
    ("000xxx00", DataFormat(4, 2, "kWh")),  # active / reactive energy totals and tariffs (00010000, 00020000)
    ("0201xx00", DataFormat(2, 1, "V")),  # phase voltage A/B/C
    ("0202xx00", DataFormat(3, 3, "A", signed=True)),  # phase current A/B/C
    ("0203xx00", DataFormat(3, 4, "kW", signed=True)),  # active power total / A / B / C
    ("0204xx00", DataFormat(3, 4, "kvar", signed=True)),  # reactive power
    ("0205xx00", DataFormat(3, 4, "kVA", signed=True)),  # apparent power
    ("0206xx00", DataFormat(2, 3, "1", signed=True)),  # power factor
    ("02800002", DataFormat(2, 2, "Hz")),  # grid frequency
)


def common_format(data_id: int) -> DataFormat | None:
    """The format of a common identifier, or None for one this table does not know."""
    text = f"{data_id:08X}"
    for pattern, fmt in _COMMON_FORMATS:
        if re.fullmatch(pattern.replace("x", "[0-9A-F]"), text):
            if pattern.startswith("000") and text[2:4] in ("03", "04"):
                return DataFormat(4, 2, "kvarh")  # 0003/0004...: reactive energy
            return fmt
    return None


def decode_value(raw: bytes, fmt: DataFormat) -> float:
    """Raises FormatError for the wrong length or bytes that are not BCD."""
    if len(raw) != fmt.size:
        raise FormatError(f"expected {fmt.size} bytes, got {len(raw)}")
    negative = fmt.signed and bool(raw[-1] & 0x80)
    digits = raw[:-1] + bytes([raw[-1] & 0x7F]) if fmt.signed else raw
    try:
        number = bcd_to_int(digits)
    except BcdError as exc:
        raise FormatError(str(exc)) from exc
    value = number / 10.0 ** fmt.decimals
    return -value if negative else value


def encode_value(value: float, fmt: DataFormat) -> bytes:
    """Raises ValueError when the value does not fit the format."""
    number = round(abs(value) * 10.0 ** fmt.decimals)
    if value < 0 and not fmt.signed:
        raise ValueError(f"{value} is negative but the format is unsigned")
    raw = bytearray(int_to_bcd(number, fmt.size))
    if fmt.signed:
        if raw[-1] & 0x80:
            raise ValueError(f"{value} does not fit in {fmt.size} signed BCD bytes")
        if value < 0 and number:
            raw[-1] |= 0x80
    return bytes(raw)
