"""The only module of the daemon that talks to pymodbus: a Modbus TCP client link, and Modbus RTU frames
for shared serial buses (built and recognised by pymodbus, carried by drivers/serial/bus.py).

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

Simulated devices (a pymodbus server, RTU slaves) live in simulators/modbus.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, ReadDiscreteInputsRequest, WriteSingleCoilRequest
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from drivers.modbus.tables import Table
from drivers.serial.frames import NEED_MORE, Accepted, Outcome, Rejected, Rejection
from gateway.model.driver import DriverError

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


def rtu_frame_size(data: bytes, decoder: DecodePDU) -> int | None:
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


def rtu_crc_ok(frame: bytes) -> bool:
    return bool(FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big")))


def _parse_rtu_reply(data: bytes, request: RtuRequest) -> Outcome[RtuAnswer]:
    unit, function_code = request.unit, request.function_code
    ours = len(data) >= 2 and data[0] == unit and data[1] & 0x7F == function_code
    size = rtu_frame_size(data, _RTU_REPLY_DECODER)
    if size is None:
        return Rejected(Rejection.NOISE, 1)
    if size == 0 or len(data) < size:
        # Wait only for what looks like our reply; anything else is dropped byte by byte.
        return NEED_MORE if ours or len(data) < 2 else Rejected(Rejection.NOISE, 1)
    frame = data[:size]
    if not rtu_crc_ok(frame):
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
