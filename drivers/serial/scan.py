"""`municipal-gateway scan PORT`: what answers on a serial bus.

Runs the probe of every protocol that has one (registered in drivers/__init__.py,
in that order) over one open bus: Modbus RTU asks every unit id in turn for
holding register 0 (any answer, an exception included, means a unit is there);
the meter protocols ask for the address of a lone meter with the wildcard
address. Only a lone meter of each kind can answer the wildcard cleanly: with
several, their replies collide and show up as rejected bytes, which the summary
reports.

So that it works on the first try on a line nobody has measured:

- the time each address gets defaults to what the line needs: the longest
  exchange a probe makes on the wire at the line's baud rate plus the time a
  slow device takes to turn round, and never less than 0.5 s (Modbus slaves
  behind opto-isolated adapters and meters waking from sleep need that much);
- between one protocol's probes and the next, the line stays silent long
  enough for every meter to drop a half-received frame: a meter whose framer
  took another protocol's request for the start of one of its own frames would
  otherwise swallow the next probe too (the meter probes send wake-up bytes too);
- every probe says what it sends before it sends it.
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
    between_protocols: float = 0.0  # seconds of silence before each protocol's probes


# The longest request plus reply a probe exchanges (bytes on the wire), and how long a slow device may
# take between the end of a request and the start of its reply.
LONGEST_EXCHANGE = 64
TURNAROUND = 0.25
MIN_REPLY_TIMEOUT = 0.5
# Silence before each protocol's probes: longer than the receive timeout of the meters' framers.
MIN_SILENCE_BETWEEN_PROTOCOLS = 0.5
_SILENCE_CHARACTERS = 100


def default_reply_timeout(settings: SerialSettings) -> float:
    """Seconds to wait for each address at these line settings (0.5 s at 9600 baud, 2.5 s at 300)."""
    return max(MIN_REPLY_TIMEOUT, LONGEST_EXCHANGE * settings.char_time + TURNAROUND)


def default_silence(settings: SerialSettings) -> float:
    return max(MIN_SILENCE_BETWEEN_PROTOCOLS, _SILENCE_CHARACTERS * settings.char_time)


Progress = Callable[[str], None]
Probe = Callable[[Bus, ScanOptions, FrameCounters, Progress], Awaitable[list[Found]]]


async def scan_bus(bus: Bus, probes: Sequence[Probe], options: ScanOptions, counters: FrameCounters,
                   progress: Progress = lambda text: None) -> list[Found]:
    found: list[Found] = []
    for index, probe in enumerate(probes):
        if index and options.between_protocols > 0:
            await asyncio.sleep(options.between_protocols)  # the silence meters need to drop a stray frame
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
    longest = len(units) * options.reply_timeout + (len(probes) - 1) * options.between_protocols
    print(f"scanning {port} at {settings.baud} {settings.data_bits}{parity}{settings.stop_bits:g}, "
          f"{options.reply_timeout:g} s per address, {options.between_protocols:g} s of silence between "
          f"protocols, Modbus units {units.start}-{units.stop - 1} (up to {longest:.0f} s) ...", flush=True)

    def tried(text: str) -> None:
        print(f"  trying {text}", flush=True)

    try:
        found, counters = asyncio.run(scan_port(port, settings, probes, options, tried))
    except DriverError as exc:
        print(f"error: {exc}")
        return 1
    if found:
        print("found:")
    for item in found:
        print(f"  {item}")
    if not found:
        print("  nothing answered (check wiring A/B, baud rate and parity)")
    if counters.rejected:
        print(f"  {counters.rejected} bytes or frames were garbled or from several devices at once "
              f"(noise {counters.noise_bytes} bytes, bad checksums {counters.bad_checksums}, "
              f"partial frames {counters.partial_frames}): check termination, or several meters answered a wildcard")
    return 0 if found else 1


__all__ = ["Found", "Parity", "Probe", "ScanOptions", "default_reply_timeout", "default_silence", "scan_bus",
           "scan_command", "scan_port"]
