"""CJ/T 188 frames: building requests, finding and checking replies, decoding the 901F payload.

    [FE ...] 68 T A0..A6 C L DATA CS 16     DATA = DI (2 bytes) SER (1 byte) payload

T is the meter type, A0..A6 the address (BCD, lowest byte first; AA is a
wildcard), C the control code (bit 7 reply, bit 6 abnormal, bits 4-0 function),
CS the byte sum from 68 through DATA. There is no +33H offset (unlike DL/T 645).
The data identifier travels low byte first in most meters (901F as 1F 90) and
high byte first in some: `DiOrder`.

Pure: no I/O. Parsers never raise on bad bytes.
"""

from __future__ import annotations

import datetime
import enum
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

START, WILDCARD = METER_START, METER_WILDCARD
HEADER = 11  # 68 T A0..A6 C L
ADDRESS_SIZE = 7

READ_DATA, READ_ADDRESS, WRITE_DATA = 0x01, 0x03, 0x04
DI_READ_DATA, DI_READ_ADDRESS = 0x901F, 0x810A
DI_VALVE_CONTROL = 0xA017  # written with 04H: one byte, open or close (55H / 99H in most meters)

# Unit byte → (unit symbol of gateway/units.py, multiplier).
UNIT_CODES: dict[int, tuple[str, float]] = {
    0x29: ("L", 1), 0x2C: ("m3", 1), 0x2D: ("m3", 10), 0x2E: ("m3", 100),
    0x32: ("L/h", 1), 0x35: ("m3/h", 1),
    0x02: ("Wh", 1), 0x05: ("kWh", 1), 0x08: ("MWh", 1), 0x0A: ("MWh", 100),
    0x0E: ("MJ", 1), 0x11: ("GJ", 1), 0x13: ("GJ", 100),
    0x14: ("W", 1), 0x17: ("kW", 1), 0x1A: ("MW", 1),
}
# Heat (20H), cooling (21H) and heat + cooling (22H) meters answer 901F with the heat meter layout.
HEAT_METER_TYPES = range(0x20, 0x23)
UNIT_BY_SYMBOL = {symbol: code for code, (symbol, multiplier) in UNIT_CODES.items() if multiplier == 1}


class DiOrder(enum.StrEnum):
    LOW_FIRST = "low-first"  # 901F travels as 1F 90 (most meters)
    HIGH_FIRST = "high-first"  # 901F travels as 90 1F


class PayloadError(ValueError):
    """A reply payload that does not hold what its identifier promises."""


@dataclass(frozen=True, slots=True)
class Frame(MeterControl):
    meter_type: int
    address: bytes  # 7 bytes, as on the wire (lowest first)
    control: int
    data: bytes  # DI, SER, payload

    def data_id(self, order: DiOrder) -> int | None:
        if len(self.data) < 2:
            return None
        return int.from_bytes(self.data[:2], "little" if order is DiOrder.LOW_FIRST else "big")

    @property
    def payload(self) -> bytes:
        """DATA after the identifier and the sequence number."""
        return self.data[3:]


def encode(frame: Frame, wake_up: int = 2) -> bytes:
    if len(frame.address) != ADDRESS_SIZE:
        raise ValueError(f"a CJ/T 188 address is {ADDRESS_SIZE} bytes, got {len(frame.address)}")
    if len(frame.data) > 255:
        raise ValueError("DATA is longer than 255 bytes")
    body = bytes([START, frame.meter_type, *frame.address, frame.control, len(frame.data), *frame.data])
    return meter_frame_bytes(body, wake_up)


def data_field(data_id: int, sequence: int, payload: bytes, order: DiOrder) -> bytes:
    return data_id.to_bytes(2, "little" if order is DiOrder.LOW_FIRST else "big") + bytes([sequence & 0xFF]) + payload


def read_data_request(meter_type: int, address: bytes, sequence: int, order: DiOrder,
                      data_id: int = DI_READ_DATA) -> Frame:
    return Frame(meter_type, address, READ_DATA, data_field(data_id, sequence, b"", order))


def write_data_request(meter_type: int, address: bytes, sequence: int, order: DiOrder, data_id: int,
                       payload: bytes) -> Frame:
    return Frame(meter_type, address, WRITE_DATA, data_field(data_id, sequence, payload, order))


def read_address_request(sequence: int, order: DiOrder, meter_type: int = WILDCARD) -> Frame:
    return Frame(meter_type, bytes([WILDCARD] * ADDRESS_SIZE), READ_ADDRESS,
                 data_field(DI_READ_ADDRESS, sequence, b"", order))


def parse(data: bytes) -> Outcome[Frame]:
    """The frame at the start of `data` (wake-up bytes before it belong to it), or what to drop."""
    found = find_meter_frame(data, HEADER)
    if not isinstance(found, Accepted):
        return found
    raw = found.value  # 68 T A0..A6 C L DATA
    return Accepted(Frame(raw[1], raw[2:9], raw[9], raw[HEADER:]), found.consumed)


def reply_parser(request: Frame, order: DiOrder) -> ReplyParser[Frame]:
    """A parser accepting only the reply to `request`: same function, an address and type it matches,
    and (for a normal reply) the same data identifier."""
    wanted_di = request.data_id(order)
    return meter_reply_parser(
        request, parse,
        from_meter=lambda frame: (address_matches(request.address, frame.address)
                                  and address_matches(bytes([request.meter_type]), bytes([frame.meter_type]))),
        same_data=lambda frame: frame.data_id(order) == wanted_di)


# --- the 901F payload of water and gas meters -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MeterReading:
    """What a water or gas meter answers to 901F. Volumes in hundredths of the unit given by the unit byte."""

    volume_hundredths: int
    volume_unit: int
    settlement_hundredths: int
    settlement_unit: int
    clock: datetime.datetime | None  # None when the meter sends an impossible date
    status: int  # the two status bytes, first byte in the low 8 bits


_PAYLOAD_SIZE = 19  # current 4+1, settlement 4+1, clock 7, status 2 (L = 22 with DI and SER)


def decode_reading(payload: bytes) -> MeterReading:
    """Raises PayloadError for a payload of the wrong size or with bytes that are not BCD."""
    if len(payload) != _PAYLOAD_SIZE:
        raise PayloadError(f"901F payload is {len(payload)} bytes, expected {_PAYLOAD_SIZE}")
    try:
        volume = bcd_to_int(payload[0:4])
        settlement = bcd_to_int(payload[5:9])
        clock = _decode_clock(payload[10:17])
    except BcdError as exc:
        raise PayloadError(str(exc)) from exc
    status = int.from_bytes(payload[17:19], "little")
    return MeterReading(volume, payload[4], settlement, payload[9], clock, status)


def encode_reading(reading: MeterReading) -> bytes:
    clock = reading.clock or datetime.datetime(2000, 1, 1)
    return (int_to_bcd(reading.volume_hundredths, 4) + bytes([reading.volume_unit])
            + int_to_bcd(reading.settlement_hundredths, 4) + bytes([reading.settlement_unit])
            + encode_clock(clock) + reading.status.to_bytes(2, "little"))


def encode_clock(moment: datetime.datetime) -> bytes:
    """ss mm hh DD MM YY CC, each one BCD byte."""
    parts = (moment.second, moment.minute, moment.hour, moment.day, moment.month, moment.year % 100,
             moment.year // 100)
    return b"".join(int_to_bcd(part, 1) for part in parts)


def _decode_clock(raw: bytes) -> datetime.datetime | None:
    second, minute, hour, day, month, year, century = (bcd_to_int(raw[i:i + 1]) for i in range(7))
    try:
        return datetime.datetime(century * 100 + year, month, day, hour, minute, second)
    except ValueError:
        return None


# --- the 901F payload of heat meters (types 20H-22H) ------------------------------------------------------
#
# CJ/T 188-2004, heat meter: settlement-day heat 4+1, current heat 4+1, heat power 4+1, flow 4+1,
# cumulative volume 4+1 (each BCD lowest byte first, then its unit byte), supply and return temperature
# 3 bytes each, cumulative working hours 3 bytes, clock 7, status 2: 43 bytes (L = 2EH with DI and SER).

@dataclass(frozen=True, slots=True)
class HeatReading:
    """What a heat meter answers to 901F: amounts in hundredths (flow in ten-thousandths) of their unit byte's
    unit, temperatures in hundredths of a degree Celsius, working hours in hours."""

    settlement_heat: int
    settlement_heat_unit: int
    heat: int
    heat_unit: int
    power: int
    power_unit: int
    flow: int  # ten-thousandths: XXXX.XXXX
    flow_unit: int
    volume: int
    volume_unit: int
    supply_temperature: int
    return_temperature: int
    working_hours: int
    clock: datetime.datetime | None
    status: int


_HEAT_PAYLOAD_SIZE = 43


def decode_heat_reading(payload: bytes) -> HeatReading:
    """Raises PayloadError for a payload of the wrong size or with bytes that are not BCD."""
    if len(payload) != _HEAT_PAYLOAD_SIZE:
        raise PayloadError(f"heat meter 901F payload is {len(payload)} bytes, expected {_HEAT_PAYLOAD_SIZE}")
    try:
        amounts = [bcd_to_int(payload[i:i + 4]) for i in range(0, 25, 5)]
        supply, back, hours = (bcd_to_int(payload[i:i + 3]) for i in (25, 28, 31))
        clock = _decode_clock(payload[34:41])
    except BcdError as exc:
        raise PayloadError(str(exc)) from exc
    units = [payload[i + 4] for i in range(0, 25, 5)]
    return HeatReading(amounts[0], units[0], amounts[1], units[1], amounts[2], units[2], amounts[3], units[3],
                       amounts[4], units[4], supply, back, hours, clock,
                       int.from_bytes(payload[41:43], "little"))


def encode_heat_reading(reading: HeatReading) -> bytes:
    pairs = ((reading.settlement_heat, reading.settlement_heat_unit), (reading.heat, reading.heat_unit),
             (reading.power, reading.power_unit), (reading.flow, reading.flow_unit),
             (reading.volume, reading.volume_unit))
    clock = reading.clock or datetime.datetime(2000, 1, 1)
    return (b"".join(int_to_bcd(amount, 4) + bytes([unit]) for amount, unit in pairs)
            + int_to_bcd(reading.supply_temperature, 3) + int_to_bcd(reading.return_temperature, 3)
            + int_to_bcd(reading.working_hours, 3) + encode_clock(clock) + reading.status.to_bytes(2, "little"))
