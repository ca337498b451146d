"""Modbus RTU on a shared bus: the same learning plan per unit and codec as Modbus TCP (polling.py), with
frames built and recognised by pymodbus (client.py) and carried by the bus (drivers/serial/bus.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from drivers.modbus.client import (
    EXCEPTION_NAMES,
    MalformedReply,
    ModbusExceptionReply,
    ReplyTimeout,
    RtuAnswer,
    RtuRequest,
    rtu_read_request,
    rtu_write_coil_request,
    rtu_write_registers_request,
)
from drivers.modbus.config import ModbusDeviceBase
from drivers.modbus.polling import UnitPoller, unit_memory
from drivers.modbus.tables import Table
from drivers.serial.bus import Bus, NoReply
from drivers.serial.device import BusDevice
from drivers.serial.frames import FrameCounters
from drivers.serial.scan import Found, Progress, ScanOptions
from gateway.model.driver import LinkContext
from gateway.model.readings import Sample, Value


class RtuLink:
    """The `RegisterLink` of polling.py over a bus, for one device (its timeout, its counters)."""

    def __init__(self, bus: Bus, timeout: float, frames: FrameCounters) -> None:
        self._bus = bus
        self._timeout = timeout
        self._frames = frames

    async def read_bits(self, table: Table, start: int, count: int, unit: int) -> list[bool]:
        answer = await self._exchange(rtu_read_request(table, start, count, unit))
        # Bits arrive packed in whole bytes; pymodbus unpacks the padding too.
        if len(answer.bits) != (count + 7) // 8 * 8:
            raise MalformedReply(f"asked for {count} bits of {table} {start}, got {len(answer.bits)}")
        return list(answer.bits[:count])

    async def read_registers(self, table: Table, start: int, count: int, unit: int) -> list[int]:
        answer = await self._exchange(rtu_read_request(table, start, count, unit))
        if len(answer.registers) != count:
            raise MalformedReply(f"asked for {count} registers of {table} {start}, got {len(answer.registers)}")
        return list(answer.registers)

    async def write_coil(self, address: int, value: bool, unit: int) -> None:
        await self._exchange(rtu_write_coil_request(address, value, unit))

    async def write_registers(self, address: int, values: Sequence[int], unit: int) -> None:
        await self._exchange(rtu_write_registers_request(address, values, unit))

    async def _exchange(self, request: RtuRequest) -> RtuAnswer:
        try:
            answer = await self._bus.exchange(request.frame, request.parse, self._timeout, self._frames,
                                              what=request.what, expect_echo=not request.reply_may_equal_request)
        except NoReply as exc:
            raise ReplyTimeout(str(exc), "timeout", link_lost=False) from exc
        if answer.exception_code is not None:
            raise ModbusExceptionReply(answer.exception_code)
        return answer


class ModbusRtuBusDevice(BusDevice[ModbusDeviceBase]):
    """A Modbus RTU slave on a serial port, or behind a serial device server."""

    def __init__(self, device: ModbusDeviceBase) -> None:
        super().__init__(device)
        self.poller = UnitPoller([device])  # until the bus driver joins it to the others (join())

    def join(self, members: Sequence[BusDevice[Any]], link: str, context: LinkContext | None) -> None:
        """Devices of one unit id on this link share one plan, kept in the state directory (when given one)."""
        group = [m for m in members if isinstance(m, ModbusRtuBusDevice) and m.device.unit_id == self.device.unit_id]
        if group[0] is self:
            devices = [member.device for member in group]
            memory = unit_memory(context.state_dir, link, devices) if context is not None else None
            poller = UnitPoller(devices, memory)
            for member in group:
                member.poller = poller

    async def read(self, bus: Bus) -> list[Sample]:
        return await self.poller.read(RtuLink(bus, self.device.timeout, self.frames), self.device)

    async def write(self, bus: Bus, point: str, value: Value) -> Value:
        return await self.poller.write(RtuLink(bus, self.device.timeout, self.frames), self.device, point, value)

    def describe(self) -> list[str]:
        return self.poller.describe(self.device)

    def counters(self) -> dict[str, int]:
        # Requests and timeouts are the bus's (writes included); refusals and decode errors the poller's.
        polled = self.poller.counters_of(self.device)
        return {**dataclasses.asdict(self.frames),
                **{name: polled[name] for name in ("exception_replies", "decode_errors", "shared_reads",
                                                   "unreadable_points")}}


async def probe(bus: Bus, options: ScanOptions, counters: FrameCounters, progress: Progress) -> list[Found]:
    """Every unit id of `options.units` asked for holding register 0; any answer, an exception too, is a unit."""
    found = []
    units = options.units
    progress(f"Modbus RTU: units {units.start}-{units.stop - 1}, reading holding register 0 of each")
    for unit in units:
        request = rtu_read_request(Table.HOLDING_REGISTER, 0, 1, unit)
        try:
            answer = await bus.exchange(request.frame, request.parse, options.reply_timeout, counters,
                                        what=request.what)
        except NoReply:
            continue
        if answer.exception_code is None:
            detail = f"holding register 0 = {answer.registers[0]}"
        else:
            name = EXCEPTION_NAMES.get(answer.exception_code, "unknown exception")
            detail = f"answers exception {answer.exception_code:02X} {name} for holding register 0"
        found.append(Found("modbus-rtu", f"unit {unit}", detail))
    return found
