"""Simulated slaves on the far end of a pseudo-terminal: a serial bus for tests, the demo and the benchmark.

`SimulatedBus` creates a pseudo-terminal pair and a symlink to its device end
(the path the gateway opens as its serial port). Bytes the gateway sends are
offered to every simulated slave; the one that recognises a request addressed
to it answers, as on a real RS-485 bus. `stop()` closes the pair (the gateway
sees its port vanish) and `start()` makes a new one behind the same path.

With `baud` set, replies are held back as long as the request and the reply
would take on a real line at that rate, plus `turnaround` (the slave's own
pause before answering), so throughput measured against it is realistic.

Bytes of a request that is not complete yet are kept until `resync_gap` seconds
pass without a byte, as a meter's framer keeps a half-received frame: a
request of another protocol that looks like the start of a frame to a meter
swallows the bytes that follow it within that time.

Slaves implement `answer(data)`: (bytes consumed, reply or None) for a request
at the start of `data`, (0, None) when more bytes are needed, None when no
request of theirs starts there. Imports no vendor library except through
`modbus_rtu_slaves()`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from drivers.cjt188 import frames as cjt188
from drivers.dlt645 import frames as dlt645
from drivers.serial.frames import Accepted, F, NeedMore, Outcome, address_bytes, address_matches

# A request split over reads is put back together; after this long without bytes, leftovers are dropped.
_RESYNC_GAP = 0.05


class Slave(Protocol):
    async def answer(self, data: bytes) -> tuple[int, bytes | None] | None: ...


async def _claim(slaves: Sequence[Slave], data: bytes) -> tuple[int, bytes | None] | None:
    """The first slave's claim on the bytes at the head of the line: (bytes it consumed, its reply); (0, None)
    when none claims them but one waits for the rest of its frame; None when no slave wants them (one byte
    of noise to skip)."""
    waiting = False
    for slave in slaves:
        answer = await slave.answer(data)
        if answer is None:
            continue
        if answer[0] == 0:
            waiting = True
            continue
        return answer
    return (0, None) if waiting else None


@dataclass
class Exchange:
    """One request seen by the simulator and the reply it wrote (monotonic times)."""

    request_at: float
    request: bytes
    reply_at: float | None = None
    reply: bytes = b""


@dataclass
class SimulatedBus:
    path: Path
    slaves: Sequence[Slave]
    baud: int | None = None
    bits_per_char: int = 11  # start + 8 data + parity + stop
    turnaround: float = 0.0
    resync_gap: float = _RESYNC_GAP
    reply_mangler: Callable[[bytes, bytes], bytes] | None = None  # (request, reply) -> bytes actually sent
    exchanges: list[Exchange] = field(default_factory=list)
    unclaimed_bytes: int = 0
    _master: int | None = None
    _slave_end: int | None = None
    _received: bytearray = field(default_factory=bytearray)
    _last_rx: float = 0.0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _worker: asyncio.Task[None] | None = None

    @property
    def char_time(self) -> float:
        return self.bits_per_char / self.baud if self.baud else 0.0

    @property
    def running(self) -> bool:
        return self._master is not None

    async def start(self) -> None:
        if self._master is not None:
            return
        master, slave_end = os.openpty()
        tty.setraw(slave_end)  # no echo, no line editing, before the gateway opens it
        os.set_blocking(master, False)
        self._master, self._slave_end = master, slave_end
        self.path.unlink(missing_ok=True)
        self.path.symlink_to(os.ttyname(slave_end))
        self._received.clear()
        asyncio.get_running_loop().add_reader(master, self._on_readable)
        self._worker = asyncio.create_task(self._serve(), name=f"simulated bus {self.path.name}")

    async def stop(self) -> None:
        """Close the pseudo-terminal: the gateway's port fails as if the adapter were unplugged."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.wait([self._worker])  # our own cancellation still propagates
            self._worker = None
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            self._master = None
        if self._slave_end is not None:
            os.close(self._slave_end)
            self._slave_end = None
        self.path.unlink(missing_ok=True)

    def push(self, data: bytes) -> None:
        """Write bytes to the gateway now, unasked (noise, or a sensor that talks by itself)."""
        if self._master is not None:
            os.write(self._master, data)

    def requests_to(self, predicate: Callable[[bytes], bool]) -> int:
        return sum(1 for exchange in self.exchanges if predicate(exchange.request))

    def _on_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:
            return  # nobody has the device end open (cannot happen while we hold it)
        now = time.monotonic()
        if now - self._last_rx > self.resync_gap:
            self.unclaimed_bytes += len(self._received)
            self._received.clear()
        self._last_rx = now
        self._received += data
        self._wake.set()

    async def _serve(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._answer_all()

    async def _answer_all(self) -> None:
        while self._received:
            data = bytes(self._received)
            claim = await _claim(self.slaves, data)
            if claim is None:
                del self._received[:1]
                self.unclaimed_bytes += 1
                continue
            consumed, reply = claim
            if consumed == 0:
                return  # a slave waits for the rest of its frame
            del self._received[:consumed]
            self._send_reply(data[:consumed], reply)

    def _send_reply(self, request: bytes, reply: bytes | None) -> None:
        exchange = Exchange(self._last_rx, request)
        self.exchanges.append(exchange)
        if reply is None:
            return
        if self.reply_mangler is not None:
            reply = self.reply_mangler(request, reply)
        delay = self.turnaround + (len(request) + len(reply)) * self.char_time
        loop = asyncio.get_running_loop()

        def write() -> None:
            if self._master is not None:
                exchange.reply_at, exchange.reply = time.monotonic(), reply
                os.write(self._master, reply)

        if delay > 0:
            loop.call_at(self._last_rx + delay, write)  # the loop's clock is time.monotonic
        else:
            write()


def modbus_rtu_slaves(unit_ids: Sequence[int]) -> tuple[Slave, object]:
    """Simulated Modbus RTU units (imports pymodbus) and the `ModbusSimulator` holding their tables."""
    from simulators.modbus import ModbusSimulator, RtuSlaves

    tables = ModbusSimulator(unit_ids)
    return RtuSlaves(tables), tables


# --- meters ----------------------------------------------------------------------------------------------

def _request_to(address: bytes, outcome: Outcome[F]) -> Accepted[F] | tuple[int, None] | None:
    """The parsed request when it is addressed to the meter at `address`; (0, None) when more bytes are needed;
    None when no request to it starts here (another meter's, or a reply on the bus)."""
    if isinstance(outcome, NeedMore):
        return 0, None
    if not isinstance(outcome, Accepted) or outcome.value.is_reply or not address_matches(outcome.value.address,
                                                                                           address):
        return None
    return outcome


@dataclass
class Cjt188MeterSim:
    """A CJ/T 188 water meter answering 901F (and read address when alone on its bus); with `heat`, a heat
    meter."""

    address: str
    meter_type: int = 0x10
    di_order: cjt188.DiOrder = cjt188.DiOrder.LOW_FIRST
    volume_hundredths: int = 0
    volume_unit: int = 0x2C
    settlement_hundredths: int = 0
    settlement_unit: int = 0x2C
    clock: datetime.datetime | None = None  # None: the current local time
    status: int = 0
    abnormal_status: int | None = None  # answer abnormally with this status byte
    silent: bool = False
    heat: cjt188.HeatReading | None = None  # a heat meter's 901F reply (give meter_type 20-22 too)
    valve_commands: list[int] = field(default_factory=list)  # A017 bytes received: 55H opens, 99H closes
    stuck_valve: bool = False  # acknowledges valve commands but its valve does not move

    async def answer(self, data: bytes) -> tuple[int, bytes | None] | None:
        mine = address_bytes(self.address)
        outcome = _request_to(mine, cjt188.parse(data))
        if not isinstance(outcome, Accepted):
            return outcome
        request = outcome.value
        if request.meter_type not in (cjt188.WILDCARD, self.meter_type) or self.silent:
            return outcome.consumed, None
        sequence = request.data[2] if len(request.data) > 2 else 0
        reply = self._reply(request, mine, sequence)
        return outcome.consumed, None if reply is None else cjt188.encode(reply)

    def _reply(self, request: cjt188.Frame, mine: bytes, sequence: int) -> cjt188.Frame | None:
        data_id = request.data_id(self.di_order)
        if request.function == cjt188.READ_ADDRESS:
            data = cjt188.data_field(cjt188.DI_READ_ADDRESS, sequence, b"", self.di_order)
            return cjt188.Frame(self.meter_type, mine, 0x80 | cjt188.READ_ADDRESS, data)
        if request.function == cjt188.WRITE_DATA and data_id == cjt188.DI_VALVE_CONTROL and len(request.payload) == 1:
            command = request.payload[0]
            self.valve_commands.append(command)
            if not self.stuck_valve and command in (0x55, 0x99):
                self.status = (self.status & ~0x0003) | (0x0001 if command == 0x99 else 0x0000)
            data = cjt188.data_field(cjt188.DI_VALVE_CONTROL, sequence, self.status.to_bytes(2, "little"),
                                     self.di_order)
            return cjt188.Frame(self.meter_type, mine, 0x80 | cjt188.WRITE_DATA, data)
        if request.function != cjt188.READ_DATA or data_id != cjt188.DI_READ_DATA:
            return None
        if self.abnormal_status is not None:
            data = cjt188.data_field(cjt188.DI_READ_DATA, sequence, bytes([self.abnormal_status, 0]), self.di_order)
            return cjt188.Frame(self.meter_type, mine, 0xC0 | cjt188.READ_DATA, data)
        clock = self.clock or datetime.datetime.now()
        if self.heat is not None:
            payload = cjt188.encode_heat_reading(dataclasses.replace(self.heat, clock=clock, status=self.status))
        else:
            payload = cjt188.encode_reading(cjt188.MeterReading(
                self.volume_hundredths, self.volume_unit, self.settlement_hundredths, self.settlement_unit, clock,
                self.status))
        data = cjt188.data_field(cjt188.DI_READ_DATA, sequence, payload, self.di_order)
        return cjt188.Frame(self.meter_type, mine, 0x80 | cjt188.READ_DATA, data)


@dataclass
class Dlt645MeterSim:
    """A DL/T 645 meter answering reads of the identifiers in `values` (others: error 02, no data): 4-byte
    identifiers read with 11H (2007 edition) and 2-byte ones read with 01H (1997 edition)."""

    address: str
    values: dict[int, float] = field(default_factory=dict)
    silent: bool = False

    async def answer(self, data: bytes) -> tuple[int, bytes | None] | None:
        mine = address_bytes(self.address)
        outcome = _request_to(mine, dlt645.parse(data))
        if not isinstance(outcome, Accepted):
            return outcome
        request = outcome.value
        if self.silent:
            return outcome.consumed, None
        if request.function == dlt645.READ_ADDRESS:
            return outcome.consumed, dlt645.encode(dlt645.Frame(mine, 0x80 | dlt645.READ_ADDRESS, mine))
        size = {dlt645.READ_DATA: 4, dlt645.READ_DATA_1997: 2}.get(request.function)
        if size is None or len(request.data) != size:
            return outcome.consumed, None  # a 2007 meter ignores 1997 reads, and the other way round
        identifier = int.from_bytes(request.data, "little")
        fmt = dlt645.common_format(identifier) if size == 4 else dlt645.common_format_1997(identifier)
        if identifier not in self.values or fmt is None:
            return outcome.consumed, dlt645.encode(dlt645.Frame(mine, 0xC0 | request.function, bytes([0x02])))
        payload = request.data + dlt645.encode_value(self.values[identifier], fmt)
        return outcome.consumed, dlt645.encode(dlt645.Frame(mine, 0x80 | request.function, payload))


@dataclass
class AsciiSensorSim:
    """Answers `request` with `line()` (a callable, so the value can change between polls)."""

    request: bytes
    line: Callable[[], str]

    async def answer(self, data: bytes) -> tuple[int, bytes | None] | None:
        if data.startswith(self.request):
            return len(self.request), self.line().encode("ascii")
        if self.request.startswith(data):
            return 0, None
        return None


@dataclass
class DeviceServerSim:
    """A transparent serial device server on 127.0.0.1 (RS-485 to Ethernet): the bytes a TCP client sends go to
    the simulated slaves on its serial line, and their replies come back, after the time request and reply take
    on a line at `baud` plus the slave's `turnaround`. One client at a time, as such servers allow; a request
    split over TCP segments is put back together (a half request is dropped after `resync_gap` of silence)."""

    slaves: Sequence[Slave]
    baud: int | None = None
    bits_per_char: int = 11
    turnaround: float = 0.0
    resync_gap: float = _RESYNC_GAP
    exchanges: list[Exchange] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and drop the client, as a device server that is switched off."""
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        received = bytearray()
        last = 0.0
        try:
            while data := await reader.read(4096):
                now = time.monotonic()
                if now - last > self.resync_gap:
                    received.clear()
                last = now
                received += data
                await self._answer_all(received, writer, now)
        except ConnectionError:
            pass  # the client went away
        finally:
            self._writers.remove(writer)
            writer.close()

    async def _answer_all(self, received: bytearray, writer: asyncio.StreamWriter, arrived: float) -> None:
        while received:
            data = bytes(received)
            claim = await _claim(self.slaves, data)
            if claim is None:
                del received[:1]
                continue
            consumed, reply = claim
            if consumed == 0:
                return  # a slave waits for the rest of its frame
            del received[:consumed]
            await self._reply(Exchange(arrived, data[:consumed]), reply, writer)

    async def _reply(self, exchange: Exchange, reply: bytes | None, writer: asyncio.StreamWriter) -> None:
        self.exchanges.append(exchange)
        if reply is None:
            return
        char_time = self.bits_per_char / self.baud if self.baud else 0.0
        delay = exchange.request_at + self.turnaround + (len(exchange.request) + len(reply)) * char_time
        wait = delay - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # the serial line's own pace, not a synchronisation
        exchange.reply_at, exchange.reply = time.monotonic(), reply
        writer.write(reply)
