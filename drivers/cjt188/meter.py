"""A CJ/T 188 water, gas or heat meter on a shared bus: one 901F read per poll.

The reply's meter type byte says its layout: heat meters (20H-22H) answer with energies, power, flow,
volume, temperatures and working hours, water and gas meters with volumes.

Abnormal replies (control bit 6) make every point bad with reason
``device-exception:XX``, XX the meter's first status byte, as Modbus exception
replies do, and are counted as exception replies. A reply whose payload cannot
be decoded makes every point bad (decode-error), counted as decode errors.
"""

from __future__ import annotations

import datetime
import logging

from drivers.cjt188 import frames
from drivers.cjt188.config import Cjt188Field, Cjt188Point
from drivers.cjt188.config import Cjt188Meter as Cjt188Settings
from drivers.serial.bus import Bus, NoReply
from drivers.serial.device import BusDevice
from drivers.serial.frames import FrameCounters, address_bytes, address_text
from drivers.serial.scan import Found, Progress, ScanOptions
from gateway.model import units
from gateway.model.driver import DriverError, WriteRefused
from gateway.model.readings import Quality, Reason, Sample, Value

log = logging.getLogger(__name__)

PROBE_WAKE_UP = 4  # FE bytes before each of the scan's probes: a sleeping meter's UART needs them to wake


class Cjt188Meter(BusDevice[Cjt188Settings]):
    def __init__(self, device: Cjt188Settings) -> None:
        super().__init__(device)
        self._address = address_bytes(device.address)
        self._sequence = 0

    def describe(self) -> list[str]:
        return [f"read data 901F from {self.device.meter_type}H meter {self.device.address}"]

    async def read(self, bus: Bus) -> list[Sample]:
        device = self.device
        self._sequence = (self._sequence + 1) & 0xFF
        request = frames.read_data_request(device.meter_type_code, self._address, self._sequence,
                                           device.data_id_order)
        reply = await bus.exchange(frames.encode(request, device.wake_up),
                                   frames.reply_parser(request, device.data_id_order),
                                   device.timeout, self.frames, what=f"read 901F from meter {device.address}")
        if reply.abnormal:
            code = reply.payload[0] if reply.payload else 0
            log.debug("meter %s answered abnormally (status %02X)", device.id, code)
            self.replies.exception_replies += 1
            return self._all_bad(f"{Reason.DEVICE_EXCEPTION.value}:{code:02X}")
        try:
            reading: frames.MeterReading | frames.HeatReading = (
                frames.decode_heat_reading(reply.payload) if reply.meter_type in frames.HEAT_METER_TYPES
                else frames.decode_reading(reply.payload))
        except frames.PayloadError as exc:
            log.debug("meter %s: %s", device.id, exc)
            self.replies.decode_errors += len(device.points)
            return self._all_bad(Reason.DECODE_ERROR.value)
        samples = [self._sample(point, reading) for point in device.points]
        self.replies.decode_errors += sum(1 for sample in samples if sample.reason == Reason.DECODE_ERROR.value)
        return samples

    async def write(self, bus: Bus, point: str, value: Value) -> Value:
        """Valve control: `valve-closed` true closes, false opens (control code 04H, identifier A017), confirmed
        by reading 901F back: the value is what the meter's status bits say of its valve now."""
        device = self.device
        target = next((p for p in device.points if p.name == point), None)
        if target is None:
            raise WriteRefused(f"device {device.id} has no point {point!r}")
        if not target.writable:
            raise WriteRefused(f"point {point!r} of device {device.id} is not declared writable")
        if target.field is not Cjt188Field.VALVE_CLOSED:
            raise WriteRefused(f"point {point!r}: only the valve (field valve-closed) of a CJ/T 188 meter is written")
        if not isinstance(value, bool):
            raise WriteRefused(f"point {point!r}: the valve takes true (close) or false (open), not {value!r}",
                               "not-representable")
        command = device.valve_close_command if value else device.valve_open_command
        self._sequence = (self._sequence + 1) & 0xFF
        request = frames.write_data_request(device.meter_type_code, self._address, self._sequence,
                                            device.data_id_order, frames.DI_VALVE_CONTROL, bytes([command]))
        reply = await bus.exchange(frames.encode(request, device.wake_up),
                                   frames.reply_parser(request, device.data_id_order), device.timeout, self.frames,
                                   what=f"valve control A017 {command:02X}H to meter {device.address}")
        if reply.abnormal:
            self.replies.exception_replies += 1
            code = reply.payload[0] if reply.payload else 0
            raise DriverError(f"meter {device.id} refused the valve command (status {code:02X})",
                              f"{Reason.DEVICE_EXCEPTION.value}:{code:02X}", link_lost=False)
        back = next(s for s in await self.read(bus) if s.point == point)
        if back.quality is Quality.BAD:
            raise DriverError(f"meter {device.id}: the valve reads {back.reason} after the command",
                              back.reason or Reason.SENSOR_FAULT.value, link_lost=False)
        return back.value

    def _sample(self, point: Cjt188Point, reading: frames.MeterReading | frames.HeatReading) -> Sample:
        if point.field in _COMMON:
            return self._status_sample(point, reading.status, reading.clock)
        if isinstance(reading, frames.HeatReading):
            return _heat_sample(point, reading)
        match point.field:
            case Cjt188Field.VOLUME:
                return _amount(point, reading.volume_hundredths, 100, reading.volume_unit)
            case Cjt188Field.SETTLEMENT_VOLUME:
                return _amount(point, reading.settlement_hundredths, 100, reading.settlement_unit)
        return _bad(point.name, Reason.DECODE_ERROR.value)  # a heat field, answered by a water meter

    def _status_sample(self, point: Cjt188Point, status: int, clock: datetime.datetime | None) -> Sample:
        device = self.device
        match point.field:
            case Cjt188Field.VALVE_CLOSED:
                valve = status & device.valve_mask
                if valve == device.valve_closed:
                    return Sample(point.name, True)
                if valve == device.valve_open:
                    return Sample(point.name, False)
                return _bad(point.name, Reason.SENSOR_FAULT.value)  # the meter reports its valve abnormal
            case Cjt188Field.BATTERY_LOW:
                return Sample(point.name, bool(status & device.battery_low_mask))
        if clock is None:
            return _bad(point.name, Reason.DECODE_ERROR.value)
        # Meters keep local time without a zone; compare with the gateway's local time.
        return Sample(point.name, round((clock - datetime.datetime.now()).total_seconds()))

    def _all_bad(self, reason: str) -> list[Sample]:
        return [_bad(point.name, reason) for point in self.device.points]


_COMMON = frozenset({Cjt188Field.VALVE_CLOSED, Cjt188Field.BATTERY_LOW, Cjt188Field.CLOCK_OFFSET})


def _heat_sample(point: Cjt188Point, reading: frames.HeatReading) -> Sample:
    match point.field:
        case Cjt188Field.HEAT_ENERGY:
            return _amount(point, reading.heat, 100, reading.heat_unit)
        case Cjt188Field.SETTLEMENT_HEAT_ENERGY:
            return _amount(point, reading.settlement_heat, 100, reading.settlement_heat_unit)
        case Cjt188Field.HEAT_POWER:
            return _amount(point, reading.power, 100, reading.power_unit)
        case Cjt188Field.FLOW:
            return _amount(point, reading.flow, 10_000, reading.flow_unit)
        case Cjt188Field.VOLUME:
            return _amount(point, reading.volume, 100, reading.volume_unit)
        case Cjt188Field.SUPPLY_TEMPERATURE:
            return _in_unit(point, reading.supply_temperature / 100, "°C")
        case Cjt188Field.RETURN_TEMPERATURE:
            return _in_unit(point, reading.return_temperature / 100, "°C")
        case Cjt188Field.WORKING_HOURS:
            return _in_unit(point, reading.working_hours, "h")
    return _bad(point.name, Reason.DECODE_ERROR.value)  # a water field, answered by a heat meter


def _amount(point: Cjt188Point, count: int, per_unit: int, unit_code: int) -> Sample:
    """An amount in the point's unit, converted from the unit the meter's unit byte states for it."""
    stated = frames.UNIT_CODES.get(unit_code)
    if stated is None:
        return _bad(point.name, Reason.DECODE_ERROR.value)
    symbol, multiplier = stated
    return _in_unit(point, count / per_unit * multiplier, symbol)


def _in_unit(point: Cjt188Point, value: float, symbol: str) -> Sample:
    try:
        conversion = units.conversion(symbol, point.unit or symbol)
    except units.UnitError:
        return _bad(point.name, Reason.DECODE_ERROR.value)  # e.g. an energy unit byte on a volume point
    converted: Value = value if conversion.is_identity else conversion.apply(value)
    return Sample(point.name, converted)


def _bad(name: str, reason: str) -> Sample:
    return Sample(name, None, Quality.BAD, reason)


async def probe(bus: Bus, options: ScanOptions, counters: FrameCounters, progress: Progress) -> list[Found]:
    """A lone CJ/T 188 meter, asked for its address with the wildcard address, in both identifier orders."""
    for order in frames.DiOrder:
        request = frames.read_address_request(1, order)
        progress(f"CJ/T 188: read address (03H, identifier 810A {order}) with the wildcard address and meter "
                 f"type AAH, {PROBE_WAKE_UP} wake-up bytes")
        try:
            reply = await bus.exchange(frames.encode(request, PROBE_WAKE_UP), frames.reply_parser(request, order),
                                       options.reply_timeout, counters, what="CJ/T 188 read address")
        except NoReply:
            continue
        return [Found("cjt188", f"address {address_text(reply.address)}",
                      f"meter type {reply.meter_type:02X}, data identifiers {order}")]
    return []
