"""Polling Modbus units by one shared, learning plan, whatever carries the frames (TCP, RTU on a serial bus,
RTU over TCP).

Devices that share a link and a unit id (one per asset on one PLC, as sites are often modelled) are one
`UnitPoller`: one plan over the union of their points, planned with the strictest of their settings
(the smallest request limits and `max_gap`, every `never_read` range). Each device is still polled on
its own schedule and gets only its own samples; a request another device of the unit made less than
one reply timeout (and one poll interval) ago is used as it is, since asking again could not give a
value much fresher than that. So four devices on one unit polled together make each request once.

What a poll returns when the unit refuses (see learning.py for what is learnt and kept):

- Exception 02 (illegal data address) to a request of several points: the refusal is recorded, the
  request is split (in halves, or along blocks already known to read) and the pieces are read at once.
  After the poll the table is planned again from what is known, merging readable blocks back into the
  fewest requests that succeed; a merge over a gap never read before is tried once, and a refused one is
  never made again.
- Exception 02 to a point read alone: that point is unreadable. It is reported once (a bad sample with
  reason ``unreadable``, and a warning), then left out of the polls and tried again on its own capped
  exponential back-off; when it reads again it is back in the plan.
- Exception 03 or 04 to a request of several points larger than any answered: the request size of
  that table is halved and the pieces read at once; later polls try sizes up to the smallest refused,
  one at a time, until the largest size that works is known. When the halving ends in one point refused
  alone, it was that point, not the size: the size lesson is withdrawn and the point is read alone.
- Any other refusal: the points of that request are bad with reason ``device-exception:XX``, XX the
  exception code in two hex digits as in datasheets (``device-exception:0B`` gateway target failed to
  respond); match reasons with ``reason.split(":")[0]``.
- Bytes that are not a value (NaN float, non-UTF-8 text) or a reply of the wrong length: those points
  are bad with reason ``decode-error``.
- No reply in time, a lost link or bytes that cannot be framed: `read()` raises DriverError
  (ReplyTimeout for a timeout) and the scheduler handles it.

The link is anything with the four calls of `RegisterLink`; it raises `ModbusExceptionReply`,
`MalformedReply`, `ReplyTimeout` or `DriverError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from drivers.modbus.client import ILLEGAL_DATA_ADDRESS, MalformedReply, ModbusExceptionReply, ReplyTimeout
from drivers.modbus.codec import (
    BitBlockDecoder,
    DecodeError,
    EncodeError,
    RegisterBlockDecoder,
    decode_point,
    encode,
    encode_bool,
)
from drivers.modbus.config import AddressRange, ModbusDeviceBase, ModbusPoint
from drivers.modbus.learning import PlanMemory, PointKey, TableKnowledge, UnitKnowledge, Unreadable, config_hash
from drivers.modbus.planner import TABLE_ORDER, Allowed, Request, halves, plan_table, plural
from drivers.modbus.tables import DataType, Table
from gateway.model.driver import DriverError, WriteRefused
from gateway.model.readings import Quality, Reason, Sample, Value

log = logging.getLogger(__name__)

UNREADABLE = "unreadable"  # the reason of a point the unit refuses even alone
# Exception replies that, to a request of several points, say the request was too large for the unit.
_SIZE_REFUSALS = (0x03, 0x04)


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
    requests: int = 0  # requests this device's polls sent
    shared_reads: int = 0  # requests answered by a read another device of the unit had just made
    exception_replies: int = 0
    decode_errors: int = 0
    timeouts: int = 0


@dataclass(frozen=True, slots=True)
class UnitPoint:
    """A point of one of the unit's devices, as the unit's plan sees it."""

    device: str
    point: ModbusPoint

    @property
    def name(self) -> str:
        return f"{self.device}/{self.point.name}"

    @property
    def table(self) -> Table:
        return self.point.table

    @property
    def address(self) -> int:
        return self.point.address

    @property
    def register_count(self) -> int:
        return self.point.register_count

    @property
    def key(self) -> PointKey:
        return point_key(self.point)


def point_key(point: ModbusPoint) -> PointKey:
    return point.table, point.address, point.register_count


@dataclass(frozen=True)
class UnitSettings:
    """The strictest of the settings of the devices on one unit: every one of them holds for the unit."""

    max_registers: int
    max_bits: int
    max_gap: int
    never_read: tuple[AddressRange, ...]
    poll_interval: float
    backoff_max: float

    @classmethod
    def of(cls, devices: Sequence[ModbusDeviceBase]) -> UnitSettings:
        return cls(min(d.max_registers_per_request for d in devices), min(d.max_bits_per_request for d in devices),
                   min(d.max_gap for d in devices), tuple(r for d in devices for r in d.never_read),
                   min(d.poll_interval for d in devices), min(d.backoff_max for d in devices))

    def limit(self, table: Table) -> int:
        return self.max_bits if table.is_bits else self.max_registers


def plan_facts(devices: Sequence[ModbusDeviceBase]) -> object:
    """What a unit's plan depends on; what was learnt is kept only while these stay the same."""
    return {"points": sorted({(p.table.value, p.address, p.register_count) for d in devices for p in d.points}),
            "settings": sorted({(d.max_registers_per_request, d.max_bits_per_request, d.max_gap,
                                 tuple((r.table.value, r.start, r.end) for r in d.never_read)) for d in devices})}


def unit_memory(state_dir: Path, link: str, devices: Sequence[ModbusDeviceBase]) -> PlanMemory:
    """Where what the unit of `devices` (on `link`) taught is kept, stamped with their configuration."""
    return PlanMemory.for_unit(state_dir, link, devices[0].unit_id, config_hash(plan_facts(devices)))


@dataclass
class _Answer:
    """What the unit answered to one request: values, or an exception code; who has used it."""

    values: Sequence[int] | None
    code: int | None
    at: float  # monotonic seconds
    taken: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _SizeLesson:
    """A size limit drawn from a request refused with 03/04, and the limit known before it."""

    table: Table
    start: int
    end: int
    previous: int | None


Decoder = RegisterBlockDecoder | BitBlockDecoder


class UnitPoller:
    """The devices of one link sharing one unit id: their plan, what the unit taught, decoders and counters."""

    def __init__(self, devices: Sequence[ModbusDeviceBase], memory: PlanMemory | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if len({d.unit_id for d in devices}) != 1:
            raise ValueError("a unit poller serves devices of one unit id")
        self.devices = {device.id: device for device in devices}
        self.unit = devices[0].unit_id
        self.settings = UnitSettings.of(devices)
        self.counters = {device.id: DeviceCounters() for device in devices}
        self._points = tuple(UnitPoint(d.id, p) for d in devices for p in d.points)
        self._clock = clock
        self._memory = memory
        self.knowledge = (memory.load(self._retry_at) if memory is not None else None) or UnitKnowledge()
        self._cache: dict[tuple[Table, int, int], _Answer] = {}
        self._decoders: dict[tuple[str, Request[UnitPoint]], Decoder] = {}
        self._reported: set[tuple[str, PointKey]] = set()  # unreadable points each device has reported
        self._retrying: set[PointKey] = set()  # unreadable points whose back-off is over: in the plan again
        self._learnt = False
        self._size_lessons: list[_SizeLesson] = []  # drawn in the poll under way
        self.requests = self._planned()

    # -- planning ---------------------------------------------------------------------------------------------

    def _planned(self) -> list[Request[UnitPoint]]:
        """The plan from what is known: unreadable points left out until their retry, known refusals avoided."""
        requests: list[Request[UnitPoint]] = []
        for table in TABLE_ORDER:
            points = [p for p in self._points if p.table is table and self._wanted(p.key)]
            if points:
                requests += plan_table(table, points, self._limit(table), self.settings.max_gap,
                                       self._allowed(table))
        return requests

    def _wanted(self, key: PointKey) -> bool:
        return key not in self.knowledge.unreadable or key in self._retrying

    def _limit(self, table: Table) -> int:
        floor = max((p.register_count for p in self._points if p.table is table), default=1)
        return self.knowledge.table(table).limit(self.settings.limit(table), floor)

    def _allowed(self, table: Table, only_known: bool = False) -> Allowed:
        known = self.knowledge.table(table)
        forbidden = [r for r in self.settings.never_read if r.table is table]

        def allowed(start: int, end: int) -> bool:
            if any(start <= r.end and r.start < end for r in forbidden):
                return False
            return known.is_readable(start, end - 1) if only_known else not known.certainly_refused(start, end - 1)

        return allowed

    def _replace(self, request: Request[UnitPoint], pieces: Sequence[Request[UnitPoint]]) -> None:
        index = next((i for i, known in enumerate(self.requests) if known is request), None)
        if index is not None:
            self.requests[index:index + 1] = pieces
        self._learnt = True

    # -- polling ----------------------------------------------------------------------------------------------

    async def read(self, link: RegisterLink, device: ModbusDeviceBase) -> list[Sample]:
        """One poll of `device`: its points' samples, in its configuration order (unreadable ones left out
        once reported)."""
        if self._retries_due():
            self.requests = self._planned()
        by_name: dict[str, Sample] = {}
        try:
            for request in tuple(self.requests):  # the plan may change while it is read
                if _uses(request, device.id):
                    for sample in await self._samples(link, request, device):
                        by_name[sample.point] = sample
        finally:
            self._remember()
        for sample in self._unreadable_news(device):
            by_name[sample.point] = sample
        return [by_name[point.name] for point in device.points if point.name in by_name]

    def _remember(self) -> None:
        """After a poll that taught something: plan again from everything known, and keep it."""
        self._size_lessons.clear()
        if self._learnt:
            self._learnt = False
            self.requests = self._planned()
            self._decoders.clear()
            if self._memory is not None:
                self._memory.save(self.knowledge)

    async def _samples(self, link: RegisterLink, request: Request[UnitPoint],
                       device: ModbusDeviceBase) -> list[Sample]:
        answer = self._fresh(request, device) or await self._ask(link, request, device)
        if answer is None:  # malformed reply, counted
            return _bad(_own(request, device.id), Reason.DECODE_ERROR.value)
        if answer.code is None:
            assert answer.values is not None
            return self._decode(request, device, answer.values)
        if answer.code == ILLEGAL_DATA_ADDRESS:
            if len({p.key for p in request.points}) > 1:
                return await self._read_pieces(link, device, self._split(request))
            self._unreadable(request)
            return []  # reported once, by _unreadable_news
        if answer.code in _SIZE_REFUSALS:
            pieces = self._shrunk(request)
            if pieces is not None:
                return await self._read_pieces(link, device, pieces)
            if len({p.key for p in request.points}) == 1:
                self._refused_alone(request)
        return _bad(_own(request, device.id), exception_reason(answer.code))

    async def _read_pieces(self, link: RegisterLink, device: ModbusDeviceBase,
                           pieces: Sequence[Request[UnitPoint]]) -> list[Sample]:
        # Only this device's pieces now; the others' devices read theirs in their own polls.
        return [sample for piece in pieces if _uses(piece, device.id)
                for sample in await self._samples(link, piece, device)]

    def _fresh(self, request: Request[UnitPoint], device: ModbusDeviceBase) -> _Answer | None:
        """A read another device of this unit made moments ago, not yet used by `device`."""
        answer = self._cache.get((request.table, request.start, request.count))
        if answer is None or device.id in answer.taken:
            return None
        if self._clock() - answer.at >= min(device.timeout, device.poll_interval):
            return None
        answer.taken.add(device.id)
        self.counters[device.id].shared_reads += 1
        return answer

    async def _ask(self, link: RegisterLink, request: Request[UnitPoint], device: ModbusDeviceBase) -> _Answer | None:
        counters = self.counters[device.id]
        counters.requests += 1
        try:
            if request.table.is_bits:
                values: Sequence[int] = await link.read_bits(request.table, request.start, request.count, self.unit)
            else:
                values = await link.read_registers(request.table, request.start, request.count, self.unit)
        except ModbusExceptionReply as reply:
            counters.exception_replies += 1
            log.debug("unit %d: %s answered %s", self.unit, request.describe(), reply)
            if reply.code == ILLEGAL_DATA_ADDRESS:
                self._learnt |= self.knowledge.table(request.table).refused_address(request.start, request.end)
            return self._keep(request, _Answer(None, reply.code, self._clock(), {device.id}))
        except MalformedReply as exc:
            log.debug("device %s: %s", device.id, exc)
            counters.decode_errors += len(_own(request, device.id))
            return None
        except ReplyTimeout:
            counters.timeouts += 1
            raise
        self._answered(request)
        return self._keep(request, _Answer(values, None, self._clock(), {device.id}))

    def _keep(self, request: Request[UnitPoint], answer: _Answer) -> _Answer:
        if len(self.devices) > 1:  # only a unit shared by several devices has anyone to share with
            self._cache[(request.table, request.start, request.count)] = answer
        return answer

    def _answered(self, request: Request[UnitPoint]) -> None:
        self._learnt |= self.knowledge.table(request.table).answered(request.start, request.end)
        key = request.points[0].key
        if key in self.knowledge.unreadable and len({p.key for p in request.points}) == 1:
            del self.knowledge.unreadable[key]
            self._retrying.discard(key)
            self._reported = {(device, known) for device, known in self._reported if known != key}
            self._learnt = True
            log.info("unit %d: %s reads again", self.unit, _where(key))

    def _decode(self, request: Request[UnitPoint], device: ModbusDeviceBase, values: Sequence[int]) -> list[Sample]:
        decoder = self._decoders.get((device.id, request))
        if decoder is None:
            own = _own(request, device.id)
            if request.table.is_bits:
                decoder = BitBlockDecoder(request.start, request.count, own)
            else:
                decoder = RegisterBlockDecoder(request.start, request.count, own, device.byte_order,
                                               device.word_order)
            self._decoders[(device.id, request)] = decoder
        samples, errors = decoder.decode(values)
        self.counters[device.id].decode_errors += errors
        return samples

    # -- learning from refusals -------------------------------------------------------------------------------

    def _split(self, request: Request[UnitPoint]) -> list[Request[UnitPoint]]:
        """The pieces of a request refused with 02: along blocks known to read when every point has been read
        before (a merge over an unknown gap was refused), else in halves (a binary search for the bad address)."""
        known = self.knowledge.table(request.table)
        if all(known.is_readable(p.address, p.address + p.register_count - 1) for p in request.points):
            pieces = plan_table(request.table, request.points, self._limit(request.table), self.settings.max_gap,
                                self._allowed(request.table, only_known=True))
        else:
            pieces = list(halves(request))
        log.info("unit %d refused %s (illegal data address); reading it as %s", self.unit, request.describe(),
                 ", ".join(piece.describe() for piece in pieces))
        self._replace(request, pieces)
        return pieces

    def _shrunk(self, request: Request[UnitPoint]) -> list[Request[UnitPoint]] | None:
        """The pieces of a request refused with 03/04 as too large, or None when size cannot be the cause."""
        if len({p.key for p in request.points}) < 2:
            return None
        known = self.knowledge.table(request.table)
        previous = known.smallest_refused
        if not known.refused_size(request.count):
            return None
        self._learnt = True
        limit = self._limit(request.table)
        if limit >= request.count:
            return None
        self._size_lessons.append(_SizeLesson(request.table, request.start, request.end, previous))
        pieces = plan_table(request.table, request.points, limit, self.settings.max_gap, self._allowed(request.table))
        log.info("unit %d refused a read of %s; reading at most %s per request", self.unit,
                 request.describe(), plural(limit, "bit" if request.table.is_bits else "register"))
        self._replace(request, pieces)
        return pieces

    def _refused_alone(self, request: Request[UnitPoint]) -> None:
        """One point refused with 03/04 even alone: it is that point (read alone from now on), and a size
        lesson drawn in this poll from a request holding it was not about size."""
        known = self.knowledge.table(request.table)
        self._learnt |= known.refused_address(request.start, request.end)
        for lesson in self._size_lessons:
            if lesson.table is request.table and lesson.start <= request.start and request.end <= lesson.end:
                known.smallest_refused = lesson.previous
                self._learnt = True

    def _unreadable(self, request: Request[UnitPoint]) -> None:
        key = request.points[0].key
        before = self.knowledge.unreadable.get(key)
        if before is not None and key not in self._retrying:
            return  # known already (another device of the unit was answered the same moments ago)
        failures = before.failures + 1 if before is not None else 1
        self.knowledge.unreadable[key] = Unreadable(failures, self._retry_at(failures))
        self._retrying.discard(key)
        self._replace(request, [])
        if before is None:
            owners = sorted({f"{p.device}/{p.point.name}" for p in request.points})
            log.warning("unit %d: %s (%s) is refused even alone (exception 02); reported unreadable and tried "
                        "again after %g s, then less often", self.unit, ", ".join(owners), _where(key),
                        self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        interval = self.settings.poll_interval
        return min(max(self.settings.backoff_max, interval), interval * 2.0 ** min(failures, 32))

    def _retry_at(self, failures: int) -> float:
        return self._clock() + self._backoff(failures)

    def _retries_due(self) -> bool:
        now = self._clock()
        due = {key for key, bad in self.knowledge.unreadable.items() if bad.retry_at <= now} - self._retrying
        self._retrying |= due
        return bool(due)

    def _unreadable_news(self, device: ModbusDeviceBase) -> list[Sample]:
        """A bad `unreadable` sample for each unreadable point of `device` it has not reported yet."""
        news: list[Sample] = []
        if not self.knowledge.unreadable:
            return news  # the usual case, on every poll: no point of the unit is unreadable
        for point in device.points:
            key = point_key(point)
            if key in self.knowledge.unreadable and (device.id, key) not in self._reported:
                self._reported.add((device.id, key))
                news.append(Sample(point.name, None, Quality.BAD, UNREADABLE))
        return news

    # -- what the plan is -------------------------------------------------------------------------------------

    def describe(self, device: ModbusDeviceBase) -> list[str]:
        """The requests `device` uses (and which other devices share them), then what the unit taught."""
        lines = []
        for request in self.requests:
            if _uses(request, device.id):
                others = sorted({p.device for p in request.points} - {device.id})
                note = f"; shared with {', '.join(others)}" if others else ""
                lines.append(request.describe(len(_own(request, device.id)), note))
        return lines + self._lessons(device)

    def _lessons(self, device: ModbusDeviceBase) -> list[str]:
        lines = []
        for table in TABLE_ORDER:
            own = [p for p in device.points if p.table is table]
            known = self.knowledge.tables.get(table)
            if not own or known is None:
                continue
            lines += _table_lessons(table, known, self._limit(table), own)
        for point in device.points:
            bad = self.knowledge.unreadable.get(point_key(point))
            if bad is not None:
                lines.append(f"unreadable: {point.name} ({_where(point_key(point))}) is refused even alone "
                             f"(02); tried again every {self._backoff(bad.failures):g} s at most")
        return lines

    def counters_of(self, device: ModbusDeviceBase) -> dict[str, int]:
        counted = vars(self.counters[device.id]).copy()
        counted["unreadable_points"] = sum(1 for p in device.points if point_key(p) in self.knowledge.unreadable)
        return counted

    # -- writing ----------------------------------------------------------------------------------------------

    async def write(self, link: RegisterLink, device: ModbusDeviceBase, point: str, value: Value) -> Value:
        """Write one writable coil (function 05) or holding-register point (06 for one register, 16 for
        several), then read it back alone and return its value. WriteRefused when it cannot be written (nothing
        is sent); DriverError with `link_lost=False` when the unit answers with an exception (reason
        ``device-exception:XX``); ReplyTimeout or DriverError when the link fails."""
        target = _writable_point(device, point)
        try:
            coil = encode_bool(target, value) if target.table is Table.COIL else None
            registers = encode(target, value, device.byte_order, device.word_order) if coil is None else []
        except EncodeError as exc:
            raise WriteRefused(str(exc), "not-representable") from exc
        self._cache.clear()  # a value read before the write must not be handed out after it
        counters = self.counters[device.id]
        try:
            counters.requests += 2
            if coil is not None:
                await link.write_coil(target.address, coil, self.unit)
                (state,) = await link.read_bits(Table.COIL, target.address, 1, self.unit)
                return state
            await link.write_registers(target.address, registers, self.unit)
            back = await link.read_registers(Table.HOLDING_REGISTER, target.address, target.register_count, self.unit)
        except ModbusExceptionReply as reply:
            counters.exception_replies += 1
            raise DriverError(f"device {device.id} refused the write to {point}: {reply}",
                              exception_reason(reply.code), link_lost=False) from reply
        except ReplyTimeout:
            counters.timeouts += 1
            raise
        except MalformedReply as exc:
            raise DriverError(f"device {device.id}: {exc}", Reason.DECODE_ERROR.value, link_lost=False) from exc
        try:
            return decode_point(target, back, device.byte_order, device.word_order)
        except DecodeError as exc:
            raise DriverError(f"device {device.id}: read-back of {point}: {exc}", Reason.DECODE_ERROR.value,
                              link_lost=False) from exc


def unit_pollers(devices: Iterable[ModbusDeviceBase],
                 memory: Callable[[Sequence[ModbusDeviceBase]], PlanMemory | None],
                 clock: Callable[[], float] = time.monotonic) -> dict[str, UnitPoller]:
    """One poller per unit id, by device id."""
    by_unit: dict[int, list[ModbusDeviceBase]] = {}
    for device in devices:
        by_unit.setdefault(device.unit_id, []).append(device)
    pollers: dict[str, UnitPoller] = {}
    for on_unit in by_unit.values():
        poller = UnitPoller(on_unit, memory(on_unit), clock)
        pollers.update((device.id, poller) for device in on_unit)
    return pollers


def _table_lessons(table: Table, known: TableKnowledge, limit: int, own: Sequence[ModbusPoint]) -> list[str]:
    low = min(p.address for p in own)
    high = max(p.address + p.register_count - 1 for p in own)
    unit = "bit" if table.is_bits else "register"
    lines = [f"learned: {table} {start}-{end} holds an address the unit refuses; no request spans it"
             for start, end in known.refused if start <= high and low <= end]
    if known.smallest_refused is not None:
        state = "" if known.size_settled else f"; trying larger, up to {known.smallest_refused - 1}"
        lines.append(f"learned: {table} at most {plural(known.largest_answered, unit)} per request "
                     f"({known.smallest_refused} refused with 03/04{state}); planned with {limit}")
    return lines


def _uses(request: Request[UnitPoint], device: str) -> bool:
    return any(p.device == device for p in request.points)


def _own(request: Request[UnitPoint], device: str) -> list[ModbusPoint]:
    return [p.point for p in request.points if p.device == device]


def _where(key: PointKey) -> str:
    table, address, size = key
    return f"{table} {address}" if size == 1 else f"{table} {address}-{address + size - 1}"


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
