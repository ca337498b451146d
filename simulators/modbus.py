"""Simulated Modbus devices for tests, the demo and the benchmark (never imported by the daemon).

`ModbusSimulator` is a real pymodbus TCP server on 127.0.0.1. Its datastore is
ours (a `ModbusServerContext` subclass answering `async_getValues` /
`async_setValues`, the two calls the pymodbus server makes), so values can be
changed while it runs, address ranges can be made to answer exceptions, and
replies can be mangled to test garbage.

`StrictGapSimulator` implements only some blocks of addresses and refuses, with exception 02, any read
that is not inside one of them, as strict PLCs (libmodbus-based ones) do even when no point lives in
the gap. `max_registers` makes any simulator refuse larger reads with exception 03, as meters that take
at most 80 registers at once do.

`RtuSlaves` answers Modbus RTU requests on a simulated serial line from a
`ModbusSimulator`'s tables (see simulators/serial.py for the line itself).
"""

from __future__ import annotations

import asyncio
import collections
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ModbusPDU
from pymodbus.server import ModbusTcpServer

from drivers.modbus.client import ILLEGAL_DATA_ADDRESS, rtu_crc_ok, rtu_frame_size
from drivers.modbus.tables import Table

_REQUESTS = DecodePDU(is_server=True)
_FRAMER = FramerRTU(DecodePDU(is_server=False))

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
                 refusals: Iterable[Refusal] = (), max_registers: int | None = None) -> None:
        self.size = size
        self.max_registers = max_registers  # larger register reads answer exception 03 (illegal data value)
        self.units = {unit: _Unit(size) for unit in unit_ids}
        self.refusals = list(refusals)
        self.requests: collections.Counter[int] = collections.Counter()  # requests received per unit id
        self.connections = 0  # client connections accepted so far (to tell a reused connection from a new one)
        self.reply_mangler: Callable[[bytes], bytes] | None = None  # rewrites each reply frame (tests)
        # A slow actuator: a written value is acknowledged at once but shows in the table this many seconds later.
        self.write_delay = 0.0
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
                                 trace_pdu=self._on_pdu, trace_packet=self._on_packet, trace_connect=self._on_connect)
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

    def _on_connect(self, connected: bool) -> None:
        self.connections += connected

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
        if last >= self.size or not self._implements(table, address, last):
            return ExcCodes.ILLEGAL_ADDRESS
        if self.max_registers is not None and not table.is_bits and count > self.max_registers:
            return ExcCodes.ILLEGAL_VALUE
        return unit, table

    def _implements(self, table: Table, first: int, last: int) -> bool:
        """Does the device have every address of `table` from `first` to `last`?"""
        return True

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
        if self.write_delay > 0:
            asyncio.get_running_loop().call_later(self.write_delay, self._store, unit, table, address, list(values))
        else:
            self._store(unit, table, address, values)
        return None

    @staticmethod
    def _store(unit: _Unit, table: Table, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        if table.is_bits:
            unit.bits[table][address:address + len(values)] = bytes(bool(v) for v in values)
        else:
            unit.registers[table][address:address + len(values)] = array("H", values)


class StrictGapSimulator(ModbusSimulator):
    """A device that has only `blocks` of each table named there (inclusive first and last addresses) and
    answers exception 02 to any read not inside one block, however small the gap it bridges."""

    def __init__(self, blocks: Mapping[Table, Sequence[tuple[int, int]]], unit_ids: Iterable[int] = (1,),
                 **options: Any) -> None:
        super().__init__(unit_ids, **options)
        self.blocks = {table: list(spans) for table, spans in blocks.items()}

    def _implements(self, table: Table, first: int, last: int) -> bool:
        spans = self.blocks.get(table)
        return spans is None or any(low <= first and last <= high for low, high in spans)


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
        size = rtu_frame_size(data, _REQUESTS)
        if size is None:
            return None
        if size == 0 or len(data) < size:
            return (0, None) if data[0] in self.simulator.units else None
        frame = data[:size]
        if not rtu_crc_ok(frame):
            return None
        unit = frame[0]
        if unit not in self.simulator.units:
            return size, None
        request = _REQUESTS.decode(frame[1:-2])
        if request is None:
            return size, None
        request.dev_id = unit
        self.simulator.requests[unit] += 1
        response = await request.datastore_update(self._datastore, unit)
        response.dev_id = unit
        return size, bytes(_FRAMER.buildFrame(response))
