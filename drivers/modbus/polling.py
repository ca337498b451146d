"""Polling one Modbus device by its plan, whatever carries the frames (TCP, RTU on a serial bus, RTU over TCP).

A poll runs the device's plan (see planner.py) one request at a time and
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
- No reply in time, a lost link or bytes that cannot be framed: `read()` raises
  DriverError (ReplyTimeout for a timeout) and the scheduler handles it.

The link is anything with the four calls of `RegisterLink`; it raises
`ModbusExceptionReply`, `MalformedReply`, `ReplyTimeout` or `DriverError`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from drivers.modbus.client import ILLEGAL_DATA_ADDRESS, MalformedReply, ModbusExceptionReply, ReplyTimeout
from drivers.modbus.codec import BitBlockDecoder, EncodeError, RegisterBlockDecoder, encode, encode_bool
from drivers.modbus.config import ModbusDeviceBase, ModbusPoint
from drivers.modbus.planner import Plan, Request
from drivers.modbus.tables import DataType, Table
from gateway.model.driver import WriteRefused
from gateway.model.readings import Quality, Reason, Sample, Value

log = logging.getLogger(__name__)


def exception_reason(code: int) -> str:
    """The sample reason for a Modbus exception reply, e.g. ``device-exception:02``."""
    return f"{Reason.DEVICE_EXCEPTION.value}:{code:02X}"


class RegisterLink(Protocol):
    """What a poll needs from whatever carries Modbus frames to a unit id."""

    async def read_bits(self, table: Table, start: int, count: int, unit: int) -> list[bool]: ...

    async def read_registers(self, table: Table, start: int, count: int, unit: int) -> list[int]: ...

    async def write_coil(self, address: int, value: bool, unit: int) -> None: ...

    async def write_registers(self, address: int, values: Sequence[int], unit: int) -> None: ...


@dataclass
class DeviceCounters:
    requests: int = 0
    exception_replies: int = 0
    decode_errors: int = 0
    timeouts: int = 0


Decoder = RegisterBlockDecoder | BitBlockDecoder


@dataclass
class ModbusDevicePoller:
    """One Modbus device: its plan (with the splits learnt so far), decoders and counters."""

    device: ModbusDeviceBase
    plan: Plan[ModbusPoint] = field(init=False)
    counters: DeviceCounters = field(default_factory=DeviceCounters)
    _decoders: dict[Request[ModbusPoint], Decoder] = field(default_factory=dict)  # keyed by request identity

    def __post_init__(self) -> None:
        self.plan = Plan(self.device.plan.requests)  # its own copy: the splits it learns are this link's

    def describe(self) -> list[str]:
        return self.plan.describe()

    async def read(self, link: RegisterLink) -> list[Sample]:
        by_name: dict[str, Sample] = {}
        for request in self.plan:
            for sample in await self._read_request(link, request):
                by_name[sample.point] = sample
        return [by_name[point.name] for point in self.device.points]

    async def _read_request(self, link: RegisterLink, request: Request[ModbusPoint]) -> list[Sample]:
        device = self.device
        counters = self.counters
        counters.requests += 1
        try:
            if request.table.is_bits:
                values: Sequence[int] = await link.read_bits(request.table, request.start, request.count,
                                                             device.unit_id)
            else:
                values = await link.read_registers(request.table, request.start, request.count, device.unit_id)
        except ModbusExceptionReply as reply:
            counters.exception_replies += 1
            if reply.code == ILLEGAL_DATA_ADDRESS and len(request.points) > 1:
                return await self._split_and_read(link, request)
            log.debug("device %s: %s answered %s", device.id, request.describe(), reply)
            return _bad(request.points, exception_reason(reply.code))
        except MalformedReply as exc:
            log.debug("device %s: %s", device.id, exc)
            counters.decode_errors += len(request.points)
            return _bad(request.points, Reason.DECODE_ERROR.value)
        except ReplyTimeout:
            counters.timeouts += 1
            raise
        samples, errors = self._decoder(request).decode(values)
        counters.decode_errors += errors
        return samples

    async def _split_and_read(self, link: RegisterLink, request: Request[ModbusPoint]) -> list[Sample]:
        halves = self.plan.split(request)
        self._decoders.pop(request, None)
        log.info("device %s refused %s (illegal data address); now reading it as %s and %s",
                 self.device.id, request.describe(), halves[0].describe(), halves[1].describe())
        return [sample for half in halves for sample in await self._read_request(link, half)]

    def _decoder(self, request: Request[ModbusPoint]) -> Decoder:
        decoder = self._decoders.get(request)
        if decoder is None:
            if request.table.is_bits:
                decoder = BitBlockDecoder(request.start, request.count, request.points)
            else:
                decoder = RegisterBlockDecoder(request.start, request.count, request.points,
                                               self.device.byte_order, self.device.word_order)
            self._decoders[request] = decoder
        return decoder

    async def write(self, link: RegisterLink, point: str, value: Value) -> None:
        """Write one writable coil or holding-register point. WriteRefused when it cannot be written
        or the device answers with an exception; DriverError when the link fails."""
        device = self.device
        target = _writable_point(device, point)
        try:
            if target.table is Table.COIL:
                await link.write_coil(target.address, encode_bool(target, value), device.unit_id)
            else:
                registers = encode(target, value, device.byte_order, device.word_order)
                await link.write_registers(target.address, registers, device.unit_id)
        except EncodeError as exc:
            raise WriteRefused(str(exc)) from exc
        except ModbusExceptionReply as reply:
            self.counters.exception_replies += 1
            raise WriteRefused(f"device {device.id} refused the write to {point}: {reply}") from reply
        except ReplyTimeout:
            self.counters.timeouts += 1
            raise


def _writable_point(device: ModbusDeviceBase, name: str) -> ModbusPoint:
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


def _bad(points: Sequence[ModbusPoint], reason: str) -> list[Sample]:
    return [Sample(point.name, None, Quality.BAD, reason) for point in points]
