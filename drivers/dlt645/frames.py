"""DL/T 645 frames (2007 and 1997 editions): building requests, finding and checking replies, data formats.

    [FE FE FE FE] 68 A0..A5 68 C L DATA CS 16

A0..A5 is the address (BCD, lowest byte first; AA..AA reads the address of a
lone meter, 99..99 is broadcast). Every DATA byte travels +33H (mod 256); the
`Frame` here holds DATA with the offset already removed. CS is the byte sum
from the first 68 through DATA (as sent). C: bit 7 reply, bit 6 abnormal
(DATA is then one error byte), bit 5 follow-up frame, bits 4-0 function.
Data identifiers are 4 bytes DI3..DI0, sent DI0 first. The 1997 edition has the
same frame with read function 01H (reply 81H, abnormal C1H) and 2-byte
identifiers DI1 DI0 (9010 forward active energy), also sent DI0 first.

Pure: no I/O. Parsers never raise on bad bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.serial.frames import (
    METER_START,
    METER_WILDCARD,
    Accepted,
    BcdError,
    MeterControl,
    Outcome,
    ReplyParser,
    address_matches,
    bcd_to_int,
    find_meter_frame,
    int_to_bcd,
    meter_frame_bytes,
    meter_reply_parser,
)

START, WILDCARD, OFFSET = METER_START, METER_WILDCARD, 0x33
HEADER = 10  # 68 A0..A5 68 C L
ADDRESS_SIZE = 6

READ_DATA, READ_ADDRESS = 0x11, 0x13
READ_DATA_1997 = 0x01

ERROR_NAMES = {0x01: "other error", 0x02: "no requested data", 0x04: "password error / unauthorised",
               0x08: "baud rate cannot be changed", 0x10: "annual time zones exceeded",
               0x20: "daily time slots exceeded", 0x40: "tariffs exceeded"}


@dataclass(frozen=True, slots=True)
class Frame(MeterControl):
    address: bytes  # 6 bytes, as on the wire (lowest first)
    control: int
    data: bytes  # without the +33H offset

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
    return meter_frame_bytes(body, wake_up)


def read_request(address: bytes, data_id: int, edition: str = "2007") -> Frame:
    """A read of one identifier: 4 bytes with function 11H (2007), or 2 bytes with function 01H (1997)."""
    if edition == "1997":
        return Frame(address, READ_DATA_1997, data_id.to_bytes(2, "little"))
    return Frame(address, READ_DATA, data_id.to_bytes(4, "little"))


def read_address_request() -> Frame:
    return Frame(bytes([WILDCARD] * ADDRESS_SIZE), READ_ADDRESS, b"")


def parse(data: bytes) -> Outcome[Frame]:
    """The frame at the start of `data` (wake-up bytes before it belong to it), or what to drop."""
    found = find_meter_frame(data, HEADER, second_start=7)
    if not isinstance(found, Accepted):
        return found
    raw = found.value  # 68 A0..A5 68 C L DATA
    unshifted = bytes((byte - OFFSET) & 0xFF for byte in raw[HEADER:])
    return Accepted(Frame(raw[1:7], raw[8], unshifted), found.consumed)


def reply_parser(request: Frame) -> ReplyParser[Frame]:
    """A parser accepting only the reply to `request`: same function, from the addressed meter
    (any meter for a wildcard request), carrying the requested identifier unless abnormal."""
    identifier = request.data if request.function in (READ_DATA, READ_DATA_1997) else b""
    return meter_reply_parser(
        request, parse, from_meter=lambda frame: address_matches(request.address, frame.address),
        same_data=lambda frame: frame.data.startswith(identifier))


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


_ENERGY = DataFormat(4, 2, "kWh")
_REACTIVE_ENERGY = DataFormat(4, 2, "kvarh")

# Energy identifiers 00 DI2 DI1 00: DI2 the kind of energy, DI1 00 the total or 01-3F a tariff.
# The combined energies (a sum of directions the meter is programmed with) may be negative;
# apparent energy (09, 0A) is in kVAh, which gateway/units.py lacks: such points give size and decimals.
_ENERGY_FORMATS: dict[int, DataFormat] = {
    0x00: DataFormat(4, 2, "kWh", signed=True),  # combined active energy
    0x01: _ENERGY,  # forward active energy
    0x02: _ENERGY,  # reverse active energy
    0x03: DataFormat(4, 2, "kvarh", signed=True),  # combined reactive energy 1
    0x04: DataFormat(4, 2, "kvarh", signed=True),  # combined reactive energy 2
    0x05: _REACTIVE_ENERGY,  # reactive energy of quadrant I
    0x06: _REACTIVE_ENERGY,  # ... quadrant II
    0x07: _REACTIVE_ENERGY,  # ... quadrant III
    0x08: _REACTIVE_ENERGY,  # ... quadrant IV
}
_LAST_TARIFF = 0x3F

# Instantaneous values 02 DI2 DI1 00: DI1 00 the total (powers, power factor), 01-03 phase A/B/C.
_INSTANT_FORMATS: dict[int, DataFormat] = {
    0x01: DataFormat(2, 1, "V"),  # phase voltage
    0x02: DataFormat(3, 3, "A", signed=True),  # phase current
    0x03: DataFormat(3, 4, "kW", signed=True),  # active power
    0x04: DataFormat(3, 4, "kvar", signed=True),  # reactive power
    0x05: DataFormat(3, 4, "kVA", signed=True),  # apparent power
    0x06: DataFormat(2, 3, "1", signed=True),  # power factor
}
_LAST_PHASE = 0x03

_SINGLE_FORMATS: dict[int, DataFormat] = {
    0x02800002: DataFormat(2, 2, "Hz"),  # grid frequency
}


# DL/T 645-1997: 2-byte identifiers. 9DI1DI0 energies (9010 forward active total, 9020 reverse, 9110/9120
# reactive), B6 instantaneous values: B611-B613 phase voltage XXX V, B621-B623 phase current XX.XX A,
# B630 total active power XX.XXXX kW, B640 total reactive power XX.XX kvar, B650 total power factor X.XXX.
_FORMATS_1997: dict[int, DataFormat] = {
    0x9010: _ENERGY, 0x9020: _ENERGY, 0x9110: _REACTIVE_ENERGY, 0x9120: _REACTIVE_ENERGY,
    **{0xB611 + phase: DataFormat(2, 0, "V") for phase in range(3)},
    **{0xB621 + phase: DataFormat(2, 2, "A") for phase in range(3)},
    0xB630: DataFormat(3, 4, "kW"), 0xB640: DataFormat(2, 2, "kvar"), 0xB650: DataFormat(2, 3, "1"),
}
_LAST_TARIFF_1997 = 0x4  # 901x: x 0 the total, 1-4 the tariffs


def common_format_1997(data_id: int) -> DataFormat | None:
    """The format of a common DL/T 645-1997 identifier, or None for one this table does not know."""
    known = _FORMATS_1997.get(data_id)
    if known is None and data_id & 0xFFF0 in (0x9010, 0x9020, 0x9110, 0x9120) and data_id & 0xF <= _LAST_TARIFF_1997:
        return _FORMATS_1997[data_id & 0xFFF0]  # a tariff's energy has the total's format
    return known


def format_of(data_id: str) -> DataFormat | None:
    """The built-in format of an identifier as written in the configuration: 8 hex digits for 2007,
    4 for 1997."""
    value = int(data_id, 16)
    return common_format_1997(value) if len(data_id) == 4 else common_format(value)


def common_format(data_id: int) -> DataFormat | None:
    """The format of a common identifier, or None for one this table does not know."""
    di3, di2, di1, di0 = data_id.to_bytes(4, "big")
    if di3 == 0x00 and di1 <= _LAST_TARIFF and di0 == 0x00:
        return _ENERGY_FORMATS.get(di2)
    if di3 == 0x02 and di1 <= _LAST_PHASE and di0 == 0x00:
        return _INSTANT_FORMATS.get(di2)
    return _SINGLE_FORMATS.get(data_id)


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
    # round(x, n) rounds the float's exact decimal value (0.005 is a hair above, so 0.01); scaling first
    # would round 0.5 half-to-even instead.
    number = round(round(abs(value), fmt.decimals) * 10 ** fmt.decimals)
    if value < 0 and not fmt.signed:
        raise ValueError(f"{value} is negative but the format is unsigned")
    raw = bytearray(int_to_bcd(number, fmt.size))
    if fmt.signed:
        if raw[-1] & 0x80:
            raise ValueError(f"{value} does not fit in {fmt.size} signed BCD bytes")
        if value < 0 and number:
            raw[-1] |= 0x80
    return bytes(raw)
