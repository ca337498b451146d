"""`municipal-gateway scan PORT`: what answers on a serial bus.

Asks every Modbus unit id in turn for holding register 0 (any answer, an
exception included, means a unit is there), then asks for the address of a
DL/T 645 meter and of a CJ/T 188 meter with the wildcard address. Only a lone
meter of each kind can answer the wildcard cleanly: with several, their replies
collide and show up as rejected bytes, which the summary reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from drivers.cjt188 import frames as cjt188
from drivers.dlt645 import frames as dlt645
from drivers.serial.bus import Bus, NoReply
from drivers.serial.config import Parity, SerialSettings
from drivers.serial.frames import FrameCounters, address_text
from gateway.model.driver import DriverError


@dataclass(frozen=True)
class Found:
    protocol: str
    address: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.protocol:<10} {self.address}" + (f"  ({self.detail})" if self.detail else "")


async def scan_bus(bus: Bus, units: Iterable[int], reply_timeout: float, counters: FrameCounters,
                   progress: Callable[[str], None] = lambda text: None) -> list[Found]:
    found = [*await _modbus_units(bus, units, reply_timeout, counters, progress)]
    progress("DL/T 645 meter (wildcard address)")
    found += await _dlt645_meter(bus, reply_timeout, counters)
    progress("CJ/T 188 meter (wildcard address)")
    found += await _cjt188_meter(bus, reply_timeout, counters)
    return found


async def _modbus_units(bus: Bus, units: Iterable[int], reply_timeout: float, counters: FrameCounters,
                        progress: Callable[[str], None]) -> list[Found]:
    from drivers.modbus.client import EXCEPTION_NAMES, rtu_read_request
    from drivers.modbus.config import Table

    found = []
    for unit in units:
        progress(f"Modbus unit {unit}")
        request = rtu_read_request(Table.HOLDING_REGISTER, 0, 1, unit)
        try:
            answer = await bus.exchange(request.frame, request.parse, reply_timeout, counters, what=request.what)
        except NoReply:
            continue
        if answer.exception_code is None:
            detail = f"holding register 0 = {answer.registers[0]}"
        else:
            name = EXCEPTION_NAMES.get(answer.exception_code, "unknown exception")
            detail = f"answers exception {answer.exception_code:02X} {name} for holding register 0"
        found.append(Found("modbus-rtu", f"unit {unit}", detail))
    return found


async def _dlt645_meter(bus: Bus, reply_timeout: float, counters: FrameCounters) -> list[Found]:
    request = dlt645.read_address_request()
    try:
        reply = await bus.exchange(dlt645.encode(request), dlt645.reply_parser(request), reply_timeout, counters,
                                   what="DL/T 645 read address")
    except NoReply:
        return []
    return [Found("dlt645", f"address {address_text(reply.address)}")]


async def _cjt188_meter(bus: Bus, reply_timeout: float, counters: FrameCounters) -> list[Found]:
    found = []
    for order in cjt188.DiOrder:
        request = cjt188.read_address_request(1, order)
        try:
            reply = await bus.exchange(cjt188.encode(request), cjt188.reply_parser(request, order), reply_timeout,
                                       counters, what="CJ/T 188 read address")
        except NoReply:
            continue
        found.append(Found("cjt188", f"address {address_text(reply.address)}",
                           f"meter type {reply.meter_type:02X}, data identifiers {order}"))
        break
    return found


async def scan_port(path: str, settings: SerialSettings, units: Iterable[int], reply_timeout: float,
                    progress: Callable[[str], None] = lambda text: None) -> tuple[list[Found], FrameCounters]:
    from drivers.serial.port import SerialPort  # imports pyserial

    bus = Bus(SerialPort(path, settings), settings.char_time, settings.frame_silence)
    counters = FrameCounters()
    await bus.open()
    try:
        return await scan_bus(bus, units, reply_timeout, counters, progress), counters
    finally:
        bus.close()


def scan_command(port: str, baud: int, parity: str, data_bits: int, stop_bits: float, reply_timeout: float,
                 first_unit: int, last_unit: int) -> int:
    """Run a scan and print it; the exit code of the command (0 found something, 1 nothing or failure)."""
    settings = SerialSettings(baud=baud, parity=Parity(parity), data_bits=data_bits,
                              stop_bits=stop_bits)
    units = range(first_unit, last_unit + 1)
    print(f"scanning {port} at {baud} {data_bits}{parity[0].upper()}{stop_bits:g}, "
          f"{reply_timeout:g} s per address, Modbus units {first_unit}-{last_unit} ...", flush=True)
    try:
        found, counters = asyncio.run(scan_port(port, settings, units, reply_timeout))
    except DriverError as exc:
        print(f"error: {exc}")
        return 1
    for item in found:
        print(f"  {item}")
    if not found:
        print("  nothing answered (check wiring A/B, baud rate and parity)")
    if counters.rejected:
        print(f"  {counters.rejected} bytes or frames were garbled or from several devices at once "
              f"(noise {counters.noise_bytes} bytes, bad checksums {counters.bad_checksums}, "
              f"partial frames {counters.partial_frames}): check termination, or several meters answered a wildcard")
    return 0 if found else 1
