"""`municipal-gateway scan PORT`: what answers on a serial bus.

Runs the probe of every protocol that has one (registered in drivers/__init__.py,
in that order) over one open bus: Modbus RTU asks every unit id in turn for
holding register 0 (any answer, an exception included, means a unit is there);
the meter protocols ask for the address of a lone meter with the wildcard
address. Only a lone meter of each kind can answer the wildcard cleanly: with
several, their replies collide and show up as rejected bytes, which the summary
reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from drivers.serial.bus import Bus
from drivers.serial.config import Parity, SerialSettings
from drivers.serial.frames import FrameCounters
from gateway.model.driver import DriverError


@dataclass(frozen=True)
class Found:
    protocol: str
    address: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.protocol:<10} {self.address}" + (f"  ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class ScanOptions:
    reply_timeout: float  # seconds to wait for each address
    units: range  # Modbus unit ids to try


Progress = Callable[[str], None]
Probe = Callable[[Bus, ScanOptions, FrameCounters, Progress], Awaitable[list[Found]]]


async def scan_bus(bus: Bus, probes: Sequence[Probe], options: ScanOptions, counters: FrameCounters,
                   progress: Progress = lambda text: None) -> list[Found]:
    found: list[Found] = []
    for probe in probes:
        found += await probe(bus, options, counters, progress)
    return found


async def scan_port(path: str, settings: SerialSettings, probes: Sequence[Probe], options: ScanOptions,
                    progress: Progress = lambda text: None) -> tuple[list[Found], FrameCounters]:
    from drivers.serial.port import SerialPort  # imports pyserial

    bus = Bus(SerialPort(path, settings), settings.char_time, settings.frame_silence)
    counters = FrameCounters()
    await bus.open()
    try:
        return await scan_bus(bus, probes, options, counters, progress), counters
    finally:
        bus.close()


def scan_command(port: str, settings: SerialSettings, probes: Sequence[Probe], options: ScanOptions) -> int:
    """Run a scan and print it; the exit code of the command (0 found something, 1 nothing or failure)."""
    units = options.units
    parity = settings.parity.value[0].upper()
    print(f"scanning {port} at {settings.baud} {settings.data_bits}{parity}{settings.stop_bits:g}, "
          f"{options.reply_timeout:g} s per address, Modbus units {units.start}-{units.stop - 1} ...", flush=True)
    try:
        found, counters = asyncio.run(scan_port(port, settings, probes, options))
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


__all__ = ["Found", "Parity", "Probe", "ScanOptions", "scan_bus", "scan_command", "scan_port"]
