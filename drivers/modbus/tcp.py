"""Modbus TCP driver: the devices behind one host:port (one unit id each), over one connection.

A poll of a device runs its plan (see planner.py) one request at a time and
decodes every point (see codec.py). Values are returned as decoded: scale,
offset, unit and range are the mapping stage's job.

What a poll returns when something goes wrong:

- The device answers a merged request with exception 02 (illegal data
  address): the request is split in two and both halves are read at once; the
  split is kept for later polls. A single-point request answered with 02 makes
  that point bad; the other points still read.
- Any Modbus exception reply: the points of that request are bad with reason
  ``device-exception:XX``, XX being the exception code in two hex digits as in
  datasheets (``device-exception:02`` illegal data address, ``device-exception:0B``
  gateway target failed to respond). The part before the colon is always
  `Reason.DEVICE_EXCEPTION`; match reasons with ``reason.split(":")[0]``.
- Bytes that are not a value (NaN float, non-UTF-8 text) or a reply of the wrong
  length: those points are bad with reason ``decode-error``.
- No reply in time, a lost connection or bytes that cannot be framed: `read()`
  raises DriverError (ReplyTimeout for a timeout). The scheduler marks the whole
  device bad, backs off and calls `connect()` again before the next poll.

`counters[device_id]` counts requests sent, exception replies, decode errors
and timeouts per device, for the status report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from drivers.base import Driver, DriverError, WriteRefused
from drivers.modbus.codec import BitBlockDecoder, EncodeError, RegisterBlockDecoder, encode, encode_bool
from drivers.modbus.config import DataType, ModbusPoint, ModbusTcpDevice, Table
from drivers.modbus.planner import Plan, Request, plan_device
from drivers.modbus.transport import (
    ILLEGAL_DATA_ADDRESS,
    MalformedReply,
    ModbusExceptionReply,
    ReplyTimeout,
    TcpLink,
)
from gateway.config.models import DeviceBase
from gateway.model import Quality, Reason, Sample, Value

log = logging.getLogger(__name__)


def exception_reason(code: int) -> str:
    """The sample reason for a Modbus exception reply, e.g. ``device-exception:02``."""
    return f"{Reason.DEVICE_EXCEPTION.value}:{code:02X}"


@dataclass
class DeviceCounters:
    requests: int = 0
    exception_replies: int = 0
    decode_errors: int = 0
    timeouts: int = 0


Decoder = RegisterBlockDecoder | BitBlockDecoder


@dataclass
class _DeviceState:
    device: ModbusTcpDevice
    plan: Plan
    decoders: dict[Request, Decoder] = field(default_factory=dict)  # keyed by request identity


class ModbusTcpDriver(Driver):
    """All devices of one Modbus TCP host:port. Raises ValueError for devices that cannot share it
    or whose points cannot be planned (the loader reports it)."""

    def __init__(self, devices: Sequence[DeviceBase]) -> None:
        super().__init__(devices)
        tcp_devices = [_as_tcp(device) for device in devices]
        if not tcp_devices:
            raise ValueError("a Modbus TCP link needs at least one device")
        first = tcp_devices[0]
        for device in tcp_devices:
            if device.link_id() != first.link_id():
                raise ValueError(f"device {device.id} is on {device.link_id()}, not {first.link_id()}")
        self._states = {device.id: _DeviceState(device, plan_device(device)) for device in tcp_devices}
        self.counters = {device.id: DeviceCounters() for device in tcp_devices}
        self._link = TcpLink(first.host, first.port, timeout=max(device.timeout for device in tcp_devices),
                             unit_timeouts={device.unit_id: device.timeout for device in tcp_devices})

    @property
    def connected(self) -> bool:
        return self._link.connected

    async def connect(self) -> None:
        if not self._link.connected:
            await self._link.connect()

    async def close(self) -> None:
        self._link.close()

    def describe_requests(self, device: DeviceBase) -> list[str]:
        return self._state(device).plan.describe()

    async def read(self, device: DeviceBase) -> list[Sample]:
        state = self._state(device)
        if not self._link.connected:
            raise DriverError(f"not connected to {state.device.host}:{state.device.port}")
        by_name: dict[str, Sample] = {}
        for request in state.plan:
            for sample in await self._read_request(state, request):
                by_name[sample.point] = sample
        return [by_name[point.name] for point in state.device.points]

    async def _read_request(self, state: _DeviceState, request: Request) -> list[Sample]:
        device = state.device
        counters = self.counters[device.id]
        counters.requests += 1
        try:
            if request.table.is_bits:
                values: Sequence[int] = await self._link.read_bits(
                    request.table, request.start, request.count, device.unit_id)
            else:
                values = await self._link.read_registers(request.table, request.start, request.count, device.unit_id)
        except ModbusExceptionReply as reply:
            counters.exception_replies += 1
            if reply.code == ILLEGAL_DATA_ADDRESS and len(request.points) > 1:
                return await self._split_and_read(state, request)
            log.debug("device %s: %s answered %s", device.id, request.describe(), reply)
            return _bad(request.points, exception_reason(reply.code))
        except MalformedReply as exc:
            log.debug("device %s: %s", device.id, exc)
            counters.decode_errors += len(request.points)
            return _bad(request.points, Reason.DECODE_ERROR.value)
        except ReplyTimeout:
            counters.timeouts += 1
            raise
        samples, errors = self._decoder(state, request).decode(values)
        counters.decode_errors += errors
        return samples

    async def _split_and_read(self, state: _DeviceState, request: Request) -> list[Sample]:
        halves = state.plan.split(request)
        state.decoders.pop(request, None)
        log.info("device %s refused %s (illegal data address); now reading it as %s and %s",
                 state.device.id, request.describe(), halves[0].describe(), halves[1].describe())
        return [sample for half in halves for sample in await self._read_request(state, half)]

    def _decoder(self, state: _DeviceState, request: Request) -> Decoder:
        decoder = state.decoders.get(request)
        if decoder is None:
            if request.table.is_bits:
                decoder = BitBlockDecoder(request.start, request.count, request.points)
            else:
                decoder = RegisterBlockDecoder(request.start, request.count, request.points,
                                               state.device.byte_order, state.device.word_order)
            state.decoders[request] = decoder
        return decoder

    async def write(self, device: DeviceBase, point: str, value: Value) -> None:
        """Write one writable coil or holding-register point. WriteRefused when it cannot be written
        or the device answers with an exception; DriverError when the link fails."""
        state = self._state(device)
        target = _writable_point(state.device, point)
        tcp = state.device
        try:
            if target.table is Table.COIL:
                await self._link.write_coil(target.address, encode_bool(target, value), tcp.unit_id)
            else:
                registers = encode(target, value, tcp.byte_order, tcp.word_order)
                await self._link.write_registers(target.address, registers, tcp.unit_id)
        except EncodeError as exc:
            raise WriteRefused(str(exc)) from exc
        except ModbusExceptionReply as reply:
            self.counters[tcp.id].exception_replies += 1
            raise WriteRefused(f"device {tcp.id} refused the write to {point}: {reply}") from reply
        except ReplyTimeout:
            self.counters[tcp.id].timeouts += 1
            raise

    def _state(self, device: DeviceBase) -> _DeviceState:
        state = self._states.get(device.id)
        if state is None:
            raise ValueError(f"device {device.id} is not on this Modbus TCP link")
        return state


def _writable_point(device: ModbusTcpDevice, name: str) -> ModbusPoint:
    point = next((p for p in device.points if p.name == name), None)
    if point is None:
        raise WriteRefused(f"device {device.id} has no point {name!r}")
    if not point.writable:
        raise WriteRefused(f"point {name!r} of device {device.id} is not declared writable")
    if point.table not in (Table.COIL, Table.HOLDING_REGISTER):
        raise WriteRefused(f"point {name!r} is in the read-only {point.table} table")
    if point.data_type is DataType.BIT:
        raise WriteRefused(f"point {name!r} is one bit of a register; writing it would overwrite the other bits")
    return point


def _as_tcp(device: DeviceBase) -> ModbusTcpDevice:
    if not isinstance(device, ModbusTcpDevice):
        raise ValueError(f"device {device.id} ({device.protocol}) is not a Modbus TCP device")
    return device


def _bad(points: Sequence[ModbusPoint], reason: str) -> list[Sample]:
    return [Sample(point.name, None, Quality.BAD, reason) for point in points]
