"""The only module that talks to pymodbus: a Modbus TCP client link and a simulator server,
and Modbus RTU frames for shared serial buses (with simulated RTU slaves).

`TcpLink` wraps `pymodbus.client.AsyncModbusTcpClient` behind a few typed calls
and turns every way a request can go wrong into one of our exceptions:

- `ModbusExceptionReply(code)`: the device answered with a Modbus exception.
- `ReplyTimeout` (a DriverError): no answer in time.
- `MalformedReply` (a DriverError): an answer of the wrong kind or length.
- `DriverError`: not connected, connection lost, or pymodbus could not frame
  the bytes it received (it then drops the connection).

pymodbus's own retries and reconnects are off: the scheduler owns retrying and
back-off, and a retry hidden in here would only stretch a poll. A lost
connection is noticed at once (through pymodbus's connect/disconnect trace
hook) instead of after a timeout.

`ModbusSimulator` is a real pymodbus TCP server on 127.0.0.1 for tests, the
demo and the benchmark. Its datastore is ours (a `ModbusServerContext`
subclass answering `async_getValues` / `async_setValues`, the two calls the
pymodbus server makes), so values can be changed while it runs, address ranges
can be made to answer exceptions, and replies can be mangled to test garbage.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from array import array
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import ModbusException, NoSuchIdException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, ReadDiscreteInputsRequest, WriteSingleCoilRequest
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)
from pymodbus.server import ModbusTcpServer

from drivers.base import DriverError
from drivers.modbus.config import Table
from drivers.serial.frames import NEED_MORE, Accepted, Outcome, Rejected, Rejection

log = logging.getLogger(__name__)

EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}
ILLEGAL_DATA_ADDRESS = 0x02

_READ_FUNCTION = {Table.COIL: 1, Table.DISCRETE_INPUT: 2, Table.HOLDING_REGISTER: 3, Table.INPUT_REGISTER: 4}
_WRITE_COIL, _WRITE_REGISTER, _WRITE_REGISTERS = 5, 6, 16
# Seconds pymodbus's own reply timer runs past ours: it is only a backstop, ours decides.
_BACKSTOP = 1.0


class ModbusExceptionReply(Exception):
    """The device answered a request with a Modbus exception code."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.text = EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(f"exception {code:02X} {self.text}")


class ReplyTimeout(DriverError):
    """No reply within the device's timeout."""


class MalformedReply(DriverError):
    """A reply that is framed correctly but is not an answer to what was asked."""


class TcpLink:
    """One TCP connection to a Modbus TCP device or gateway. Used by one task at a time."""

    def __init__(self, host: str, port: int, timeout: float, unit_timeouts: Mapping[int, float] | None = None) -> None:
        """`timeout` bounds connecting and any reply; `unit_timeouts` gives some units their own reply timeout."""
        self.host = host
        self.port = port
        self.timeout = timeout
        self.unit_timeouts = dict(unit_timeouts or {})
        self._client: AsyncModbusTcpClient | None = None
        self._lost: asyncio.Future[None] | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected and not self._is_lost()

    def _is_lost(self) -> bool:
        return self._lost is None or self._lost.done()

    async def connect(self) -> None:
        """Open a fresh connection (closing any old one). Raises DriverError."""
        self.close()
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()

        def on_connection_change(connected: bool) -> None:
            if not connected and not lost.done():
                lost.set_result(None)

        longest_reply = max([self.timeout, *self.unit_timeouts.values()])
        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=longest_reply + _BACKSTOP, retries=0,
                                      reconnect_delay=0, trace_connect=on_connection_change)
        try:
            async with asyncio.timeout(self.timeout):
                ok = await client.connect()
        except TimeoutError:
            ok = False
        if not ok:
            client.close()
            raise DriverError(f"cannot connect to {self.host}:{self.port}")
        self._client, self._lost = client, lost

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = self._lost = None

    async def read_bits(self, table: Table, start: int, count: int, unit: int) -> list[bool]:
        client = self._require_client()
        call = client.read_coils if table is Table.COIL else client.read_discrete_inputs
        response = await self._execute(lambda: call(start, count=count, device_id=unit), _READ_FUNCTION[table],
                                       unit, f"read {table} {start}+{count} unit {unit}")
        bits = list(response.bits)
        # Bits arrive packed in whole bytes; pymodbus unpacks the padding too.
        if len(bits) != (count + 7) // 8 * 8:
            raise MalformedReply(f"asked for {count} bits of {table} {start}, got {len(bits)}")
        return bits[:count]

    async def read_registers(self, table: Table, start: int, count: int, unit: int) -> list[int]:
        client = self._require_client()
        call = client.read_holding_registers if table is Table.HOLDING_REGISTER else client.read_input_registers
        response = await self._execute(lambda: call(start, count=count, device_id=unit), _READ_FUNCTION[table],
                                       unit, f"read {table} {start}+{count} unit {unit}")
        registers = list(response.registers)
        if len(registers) != count:
            raise MalformedReply(f"asked for {count} registers of {table} {start}, got {len(registers)}")
        return registers

    async def write_coil(self, address: int, value: bool, unit: int) -> None:
        client = self._require_client()
        await self._execute(lambda: client.write_coil(address, value, device_id=unit), _WRITE_COIL,
                            unit, f"write coil {address} unit {unit}")

    async def write_registers(self, address: int, values: Sequence[int], unit: int) -> None:
        """Function 06 for one register, 16 for several."""
        client = self._require_client()
        if len(values) == 1:
            await self._execute(lambda: client.write_register(address, values[0], device_id=unit),
                                _WRITE_REGISTER, unit, f"write holding_register {address} unit {unit}")
        else:
            await self._execute(lambda: client.write_registers(address, list(values), device_id=unit),
                                _WRITE_REGISTERS, unit, f"write holding_register {address}+{len(values)}")

    def _require_client(self) -> AsyncModbusTcpClient:
        # Checked before every request: pymodbus would otherwise silently reconnect on its own.
        if self._client is None or not self.connected:
            raise DriverError(f"not connected to {self.host}:{self.port}")
        return self._client

    async def _execute(self, call: Callable[[], Awaitable[ModbusPDU]], function_code: int,
                       unit: int, what: str) -> ModbusPDU:
        """Run one request, racing it against the connection dropping and the unit's timeout."""
        assert self._lost is not None  # _require_client() ran
        lost = self._lost
        timeout = self.unit_timeouts.get(unit, self.timeout)
        request = asyncio.ensure_future(call())
        try:
            await asyncio.wait((request, lost), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            answered = request.done()
            if not answered:
                # Cancelling releases pymodbus's request lock; a late reply is then
                # discarded by pymodbus (its transaction id no longer matches).
                request.cancel()
                request.add_done_callback(_consume_result)
        if not answered:
            if lost.done():
                raise DriverError(f"{what}: connection to {self.host}:{self.port} lost")
            # Only this device is silent; the link stays up for the other units behind it.
            raise ReplyTimeout(f"{what}: no reply within {timeout:g} s", "timeout", link_lost=False)
        try:
            response = request.result()
        except ModbusException as exc:
            raise DriverError(f"{what}: {exc}") from exc
        if response.isError():
            raise ModbusExceptionReply(int(getattr(response, "exception_code", 0)))
        if response.function_code != function_code:
            raise MalformedReply(f"{what}: reply has function code {response.function_code}")
        return response


def _consume_result(task: asyncio.Future[ModbusPDU]) -> None:
    """Retrieve the outcome of an abandoned request so asyncio does not log it as unhandled."""
    if not task.cancelled():
        task.exception()


# --- simulator --------------------------------------------------------------------------------------------

_FUNCTION_TABLE = {1: Table.COIL, 5: Table.COIL, 15: Table.COIL, 2: Table.DISCRETE_INPUT,
                   3: Table.HOLDING_REGISTER, 6: Table.HOLDING_REGISTER, 16: Table.HOLDING_REGISTER,
                   22: Table.HOLDING_REGISTER, 23: Table.HOLDING_REGISTER, 4: Table.INPUT_REGISTER}


@dataclass(frozen=True)
class Refusal:
    """Requests touching `table` `start`-`end` (inclusive) answer exception `code`."""

    table: Table
    start: int
    end: int
    code: int = ILLEGAL_DATA_ADDRESS
    unit: int | None = None  # None: every unit


class _Unit:
    """The four tables of one simulated device."""

    def __init__(self, size: int) -> None:
        self.registers = {Table.HOLDING_REGISTER: array("H", bytes(2 * size)),
                          Table.INPUT_REGISTER: array("H", bytes(2 * size))}
        self.bits = {Table.COIL: bytearray(size), Table.DISCRETE_INPUT: bytearray(size)}


class ModbusSimulator:
    """A Modbus TCP server on 127.0.0.1 serving several unit ids, each with four tables of `size` addresses.

    Addresses at or past `size` answer exception 02, like a real device's limited map.
    A unit id not served answers exception 0B (gateway target failed to respond).
    """

    def __init__(self, unit_ids: Iterable[int] = (1,), *, port: int = 0, size: int = 10_000,
                 refusals: Iterable[Refusal] = ()) -> None:
        self.size = size
        self.units = {unit: _Unit(size) for unit in unit_ids}
        self.refusals = list(refusals)
        self.requests: collections.Counter[int] = collections.Counter()  # requests received per unit id
        self.reply_mangler: Callable[[bytes], bytes] | None = None  # rewrites each reply frame (tests)
        self._port = port
        self._server: ModbusTcpServer | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one picked by the system once started with port 0)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        server = ModbusTcpServer(_Datastore(self), address=("127.0.0.1", self._port),
                                 trace_pdu=self._on_pdu, trace_packet=self._on_packet)
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None) or ()
        if sockets:
            self._port = int(sockets[0].getsockname()[1])
        self._server = server

    async def stop(self) -> None:
        """Stop listening and drop every client connection."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()  # type: ignore[no-untyped-call]

    # --- values ---

    def set_registers(self, unit: int, table: Table, address: int, values: Sequence[int]) -> None:
        self.units[unit].registers[table][address:address + len(values)] = array("H", values)

    def get_registers(self, unit: int, table: Table, address: int, count: int) -> list[int]:
        return list(self.units[unit].registers[table][address:address + count])

    def set_bits(self, unit: int, table: Table, address: int, values: Sequence[bool]) -> None:
        self.units[unit].bits[table][address:address + len(values)] = bytes(bool(v) for v in values)

    def get_bits(self, unit: int, table: Table, address: int, count: int) -> list[bool]:
        return [bool(b) for b in self.units[unit].bits[table][address:address + count]]

    def refuse(self, table: Table, start: int, end: int, code: int = ILLEGAL_DATA_ADDRESS,
               unit: int | None = None) -> None:
        self.refusals.append(Refusal(table, start, end, code, unit))

    # --- the datastore behind the pymodbus server ---

    def _on_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests[pdu.dev_id] += 1
        return pdu

    def _on_packet(self, sending: bool, data: bytes) -> bytes:
        if sending and self.reply_mangler is not None:
            return self.reply_mangler(data)
        return data

    def _check(self, unit_id: int, function_code: int, address: int, count: int) -> tuple[_Unit, Table] | ExcCodes:
        unit = self.units.get(unit_id)
        if unit is None:
            raise NoSuchIdException(f"unit {unit_id} is not simulated")
        table = _FUNCTION_TABLE.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        last = address + count - 1
        for refusal in self.refusals:
            if (refusal.table is table and refusal.unit in (None, unit_id)
                    and address <= refusal.end and refusal.start <= last):
                return ExcCodes(refusal.code)
        if last >= self.size:
            return ExcCodes.ILLEGAL_ADDRESS
        return unit, table

    def _get(self, unit_id: int, function_code: int, address: int, count: int) -> list[int] | list[bool] | ExcCodes:
        checked = self._check(unit_id, function_code, address, count)
        if isinstance(checked, ExcCodes):
            return checked
        unit, table = checked
        if table.is_bits:
            return [bool(b) for b in unit.bits[table][address:address + count]]
        return list(unit.registers[table][address:address + count])

    def _set(self, unit_id: int, function_code: int, address: int,
             values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        checked = self._check(unit_id, function_code, address, len(values))
        if isinstance(checked, ExcCodes):
            return checked
        unit, table = checked
        if table.is_bits:
            unit.bits[table][address:address + len(values)] = bytes(bool(v) for v in values)
        else:
            unit.registers[table][address:address + len(values)] = array("H", values)
        return None


class _Datastore(ModbusServerContext):
    """Hands the pymodbus server's datastore calls to the simulator.

    Deliberately skips ModbusServerContext.__init__ (which builds its own
    device blocks); the server only reads `simdevices`/`old_simulator` to pick
    this object as its datastore, then calls the three methods below.
    """

    def __init__(self, simulator: ModbusSimulator) -> None:  # pylint: disable=super-init-not-called
        self._simulator = simulator
        self.old_simulator = True
        self.simdevices = []

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        return self._simulator._get(device_id, func_code, address, count)

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        return self._simulator._set(device_id, func_code, address, values)

    def device_ids(self) -> list[int]:
        return sorted(self._simulator.units)


# --- Modbus RTU: frames for a shared serial bus (or a serial device server over TCP) --------------------
#
# The bus (drivers/serial/bus.py) sends and receives; here pymodbus builds the
# request frames and recognises reply frames (PDU classes, frame sizes, CRC).
# `RtuRequest.parse` looks only at the front of what was received and says
# whether it is the reply, still incomplete, or bytes to drop: noise, a frame
# with a bad CRC, a valid frame from another unit id, or a frame from our unit
# that does not answer this request (a read reply with the wrong byte count, a
# write reply naming another address, value or count).

_RTU_FRAMER = FramerRTU(DecodePDU(is_server=False))
_RTU_REPLY_DECODER = DecodePDU(is_server=False)
_RTU_REQUEST_DECODER = DecodePDU(is_server=True)
_RTU_MIN_FRAME = 4  # unit, function, CRC
_RTU_MAX_FRAME = 256

_RTU_READ_REQUEST: dict[Table, type[ModbusPDU]] = {
    Table.COIL: ReadCoilsRequest, Table.DISCRETE_INPUT: ReadDiscreteInputsRequest,
    Table.HOLDING_REGISTER: ReadHoldingRegistersRequest, Table.INPUT_REGISTER: ReadInputRegistersRequest,
}


@dataclass(frozen=True)
class RtuAnswer:
    """A reply from the unit asked: register values, bits, or an exception code."""

    registers: tuple[int, ...] = ()
    bits: tuple[bool, ...] = ()
    exception_code: int | None = None


@dataclass(frozen=True)
class RtuRequest:
    frame: bytes
    unit: int
    function_code: int
    what: str
    # What a normal reply begins with: unit, function and byte count for a read; for a write the
    # request's first six bytes (unit, function, address, and the value or count), which the reply repeats.
    reply_start: bytes

    @property
    def reply_may_equal_request(self) -> bool:
        """Write single coil / register: the normal reply repeats the request byte for byte."""
        return self.function_code in (_WRITE_COIL, _WRITE_REGISTER)

    def parse(self, data: bytes) -> Outcome[RtuAnswer]:
        return _parse_rtu_reply(data, self)


def rtu_read_request(table: Table, start: int, count: int, unit: int) -> RtuRequest:
    pdu = _RTU_READ_REQUEST[table](address=start, count=count, dev_id=unit)
    byte_count = (count + 7) // 8 if table.is_bits else 2 * count
    return RtuRequest(_RTU_FRAMER.buildFrame(pdu), unit, pdu.function_code,
                      f"read {table} {start}+{count} unit {unit}", bytes([unit, pdu.function_code, byte_count]))


def _write_request(pdu: ModbusPDU, unit: int, what: str) -> RtuRequest:
    frame = _RTU_FRAMER.buildFrame(pdu)
    return RtuRequest(frame, unit, pdu.function_code, what, frame[:6])


def rtu_write_coil_request(address: int, value: bool, unit: int) -> RtuRequest:
    pdu = WriteSingleCoilRequest(address=address, bits=[value], dev_id=unit)
    return _write_request(pdu, unit, f"write coil {address} unit {unit}")


def rtu_write_registers_request(address: int, values: Sequence[int], unit: int) -> RtuRequest:
    """Function 06 for one register, 16 for several."""
    pdu: ModbusPDU
    if len(values) == 1:
        pdu = WriteSingleRegisterRequest(address=address, registers=list(values), dev_id=unit)
    else:
        pdu = WriteMultipleRegistersRequest(address=address, registers=list(values), dev_id=unit)
    return _write_request(pdu, unit, f"write holding_register {address}+{len(values)} unit {unit}")


def _rtu_frame_size(data: bytes, decoder: DecodePDU) -> int | None:
    """Size of the RTU frame starting at data[0] (0: not known yet), or None when no frame starts there."""
    if len(data) < 2:
        return 0
    try:
        pdu_class = decoder.lookupPduClass(data)
        if pdu_class is None:
            return None
        size = int(pdu_class.calculateRtuFrameSize(data))
    except (ModbusException, IndexError, KeyError):
        return None
    if size and not _RTU_MIN_FRAME <= size <= _RTU_MAX_FRAME:
        return None
    return size


def _rtu_crc_ok(frame: bytes) -> bool:
    return bool(FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big")))


def _parse_rtu_reply(data: bytes, request: RtuRequest) -> Outcome[RtuAnswer]:
    unit, function_code = request.unit, request.function_code
    ours = len(data) >= 2 and data[0] == unit and data[1] & 0x7F == function_code
    size = _rtu_frame_size(data, _RTU_REPLY_DECODER)
    if size is None:
        return Rejected(Rejection.NOISE, 1)
    if size == 0 or len(data) < size:
        # Wait only for what looks like our reply; anything else is dropped byte by byte.
        return NEED_MORE if ours or len(data) < 2 else Rejected(Rejection.NOISE, 1)
    frame = data[:size]
    if not _rtu_crc_ok(frame):
        return Rejected(Rejection.BAD_CHECKSUM if ours else Rejection.NOISE, 1)
    if data[0] != unit:
        return Rejected(Rejection.FOREIGN, size)
    pdu = _RTU_REPLY_DECODER.decode(frame[1:-2])
    if pdu is None or pdu.function_code & 0x7F != function_code:
        return Rejected(Rejection.MALFORMED, size)
    if pdu.isError():
        return Accepted(RtuAnswer(exception_code=int(pdu.exception_code)), size)
    if not frame.startswith(request.reply_start):
        return Rejected(Rejection.MALFORMED, size)  # our unit, but not an answer to this request
    return Accepted(RtuAnswer(registers=tuple(pdu.registers), bits=tuple(bool(b) for b in pdu.bits)), size)


class RtuSlaves:
    """Simulated Modbus RTU units on one serial line, answering from a `ModbusSimulator`'s tables
    (which need not be started as a TCP server). A unit id the simulator does not have stays
    silent, like a dead slave. For tests, the demo and the benchmark."""

    def __init__(self, simulator: ModbusSimulator) -> None:
        self.simulator = simulator
        self._datastore = _Datastore(simulator)

    async def answer(self, data: bytes) -> tuple[int, bytes | None] | None:
        """(bytes consumed, reply or None) for a request frame at the start of `data`;
        (0, None) when more bytes are needed; None when no Modbus request starts there."""
        size = _rtu_frame_size(data, _RTU_REQUEST_DECODER)
        if size is None:
            return None
        if size == 0 or len(data) < size:
            return (0, None) if data[0] in self.simulator.units else None
        frame = data[:size]
        if not _rtu_crc_ok(frame):
            return None
        unit = frame[0]
        if unit not in self.simulator.units:
            return size, None
        request = _RTU_REQUEST_DECODER.decode(frame[1:-2])
        if request is None:
            return size, None
        request.dev_id = unit
        self.simulator.requests[unit] += 1
        response = await request.datastore_update(self._datastore, unit)
        response.dev_id = unit
        return size, bytes(_RTU_FRAMER.buildFrame(response))
