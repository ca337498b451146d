"""Turning Modbus registers and bits into point values, and values back into registers.

Byte order is the order of the two bytes inside one register; word order is the
order of the registers of a multi-register value. "big" is the Modbus standard
(most significant first) for both. The four combinations, for the 32-bit value
0x11223344 (bytes A=11 B=22 C=33 D=44) as they appear in the registers:

    byte big,    word big:    ABCD   registers 0x1122 0x3344
    byte little, word little: DCBA   registers 0x4433 0x2211
    byte big,    word little: CDAB   registers 0x3344 0x1122
    byte little, word big:    BADC   registers 0x2211 0x4433

Decoding packs a whole response once into bytes, in two forms when needed:
registers as sent ("big") and with the two bytes of every register swapped.
Every combination is then a single `struct` unpack at an offset: when byte and
word order agree the bytes as sent read as one big- (or little-) endian number;
when they disagree, swapping the bytes inside each register makes them agree.

Special cases:
- bit: bit `n` (0 = least significant) of the register read as a uint16 in the
  point's byte order.
- string: `length` registers, two characters each, in register order (word
  order does not apply); byte order decides which character of a register comes
  first. UTF-8; text stops at the first NUL and trailing spaces are removed.
- float32/float64: NaN and infinities are not values: the sample is bad (decode-error).

Pure: no protocol library, no I/O.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.modbus.config import ModbusPoint
from drivers.modbus.tables import DataType, Order
from gateway.model.readings import Quality, Reason, Sample, Value


class DecodeError(ValueError):
    """The bytes of a point are not a value of its type."""


class EncodeError(ValueError):
    """A value that cannot be written as the point's type."""


# struct format letter of each fixed-size numeric type.
_FORMATS: dict[DataType, str] = {
    DataType.BIT: "H", DataType.INT16: "h", DataType.UINT16: "H",
    DataType.INT32: "i", DataType.UINT32: "I", DataType.INT64: "q", DataType.UINT64: "Q",
    DataType.FLOAT32: "f", DataType.FLOAT64: "d",
}
_INTEGER_BITS: dict[DataType, tuple[int, bool]] = {  # width, signed
    DataType.INT16: (16, True), DataType.UINT16: (16, False), DataType.INT32: (32, True),
    DataType.UINT32: (32, False), DataType.INT64: (64, True), DataType.UINT64: (64, False),
}


@dataclass(frozen=True, slots=True)
class Layout:
    """How one point's bytes are read out of a packed response."""

    swap_bytes: bool  # read from the byte-swapped copy of the registers
    endian: str  # ">" or "<"

    @staticmethod
    def of(point: ModbusPoint, byte_order: Order, word_order: Order) -> Layout:
        """The point's own orders where given, else the device defaults."""
        byte = point.byte_order or byte_order
        word = point.word_order or word_order
        if point.data_type is DataType.STRING:
            # Characters follow register order; only the byte order inside a register matters.
            return Layout(swap_bytes=byte is Order.LITTLE, endian=">")
        return Layout(swap_bytes=byte is not word, endian=">" if word is Order.BIG else "<")


class _PointDecoder:
    """One point of a block, with its struct and offset worked out once."""

    __slots__ = ("bit", "kind", "name", "offset", "size", "struct", "swap_bytes")

    def __init__(self, point: ModbusPoint, block_start: int, layout: Layout) -> None:
        self.name = point.name
        self.kind = point.data_type
        self.offset = (point.address - block_start) * 2  # in bytes
        self.size = point.register_count * 2
        self.swap_bytes = layout.swap_bytes
        self.bit = point.bit or 0
        fmt = _FORMATS.get(self.kind)
        self.struct = _shared_struct(layout.endian + fmt) if fmt else None

    def decode(self, as_sent: bytes, swapped: bytes) -> Value:
        data = swapped if self.swap_bytes else as_sent
        if self.struct is None:  # string
            return _decode_string(data[self.offset:self.offset + self.size])
        value: int | float = self.struct.unpack_from(data, self.offset)[0]
        if self.kind is DataType.BIT:
            return bool((int(value) >> self.bit) & 1)
        if isinstance(value, float) and not math.isfinite(value):
            raise DecodeError(f"{value} is not a measurement")
        return value


# What to do with a value a block struct unpacked, by point (the bit number for type bit).
_PLAIN, _FLOAT = -1, -2


class _Run:
    """Points of one block that share a byte layout and do not overlap: one struct unpacks all of them,
    the gaps between them skipped as pad bytes."""

    __slots__ = ("names", "post", "struct", "swap_bytes")

    def __init__(self, layout: Layout, points: Sequence[ModbusPoint], block_start: int) -> None:
        self.swap_bytes = layout.swap_bytes
        self.names = tuple(point.name for point in points)
        parts, cursor = [layout.endian], 0
        post: list[int] = []
        for point in points:
            offset = (point.address - block_start) * 2
            if offset > cursor:
                parts.append(f"{offset - cursor}x")
            kind = point.data_type
            parts.append(_FORMATS[kind])
            cursor = offset + point.register_count * 2
            if kind is DataType.BIT:
                post.append(point.bit or 0)
            else:
                post.append(_FLOAT if kind in (DataType.FLOAT32, DataType.FLOAT64) else _PLAIN)
        self.post = tuple(post)
        self.struct = _shared_struct("".join(parts))

    def decode(self, as_sent: bytes, swapped: bytes, samples: list[Sample]) -> int:
        """Append a sample per point; how many of them are not values (NaN, infinite)."""
        values = self.struct.unpack_from(swapped if self.swap_bytes else as_sent)
        errors = 0
        for name, value, post in zip(self.names, values, self.post, strict=True):
            if post == _PLAIN:
                samples.append(Sample(name, value))
            elif post >= 0:
                samples.append(Sample(name, bool((value >> post) & 1)))
            elif math.isfinite(value):
                samples.append(Sample(name, value))
            else:
                samples.append(_bad(name))
                errors += 1
        return errors


class RegisterBlockDecoder:
    """Decodes the registers of one read request into samples of its points.

    Built once per request and reused on every poll. The response is packed into bytes once (twice when
    some point needs its bytes swapped), then each run of points sharing a byte layout is unpacked by one
    struct call; text, and points overlapping an earlier one, are decoded one by one.
    """

    def __init__(self, start: int, count: int, points: Sequence[ModbusPoint],
                 byte_order: Order, word_order: Order) -> None:
        self.count = count
        self._points = tuple(point.name for point in points)
        by_layout: dict[Layout, list[ModbusPoint]] = {}
        self._singles: list[_PointDecoder] = []
        ends: dict[Layout, int] = {}
        for point in sorted(points, key=lambda p: (p.address, p.name)):
            layout = Layout.of(point, byte_order, word_order)
            if point.data_type is DataType.STRING or point.address < ends.get(layout, 0):
                self._singles.append(_PointDecoder(point, start, layout))
                continue
            by_layout.setdefault(layout, []).append(point)
            ends[layout] = point.address + point.register_count
        self._runs = [_Run(layout, run, start) for layout, run in by_layout.items()]
        self._needs_swapped = (any(run.swap_bytes for run in self._runs)
                               or any(single.swap_bytes for single in self._singles))
        self._as_sent = _shared_struct(f">{count}H")
        self._swapped = _shared_struct(f"<{count}H")

    def decode(self, registers: Sequence[int]) -> tuple[list[Sample], int]:
        """Samples of every point, and how many of them failed to decode."""
        if len(registers) != self.count:
            return self._all_bad()
        try:
            as_sent = self._as_sent.pack(*registers)
            swapped = self._swapped.pack(*registers) if self._needs_swapped else b""
        except struct.error:  # a register outside 0..65535
            return self._all_bad()
        samples: list[Sample] = []
        errors = sum(run.decode(as_sent, swapped, samples) for run in self._runs)
        for single in self._singles:
            try:
                samples.append(Sample(single.name, single.decode(as_sent, swapped)))
            except DecodeError:
                samples.append(_bad(single.name))
                errors += 1
        return samples, errors

    def _all_bad(self) -> tuple[list[Sample], int]:
        return [_bad(name) for name in self._points], len(self._points)


@functools.lru_cache(maxsize=1024)
def _shared_struct(fmt: str) -> struct.Struct:
    """Structs are immutable: devices of one model share theirs."""
    return struct.Struct(fmt)


class BitBlockDecoder:
    """Decodes the bits of one coil / discrete-input read into samples of its points."""

    def __init__(self, start: int, count: int, points: Sequence[ModbusPoint]) -> None:
        self.count = count
        self._offsets = [(point.name, point.address - start) for point in points]

    def decode(self, bits: Sequence[int]) -> tuple[list[Sample], int]:
        """Samples in point order, and how many failed. Takes bools (or 0/1)."""
        if len(bits) < self.count:
            return [_bad(name) for name, _ in self._offsets], len(self._offsets)
        return [Sample(name, bool(bits[offset])) for name, offset in self._offsets], 0


def decode_point(point: ModbusPoint, registers: Sequence[int],
                 byte_order: Order = Order.BIG, word_order: Order = Order.BIG) -> Value:
    """The value of one point from exactly its own registers. Raises DecodeError.

    The block decoders above are what the driver uses; this is the one-off form.
    """
    if len(registers) != point.register_count:
        raise DecodeError(f"{point.name}: expected {point.register_count} registers, got {len(registers)}")
    try:
        as_sent = struct.pack(f">{len(registers)}H", *registers)
        swapped = struct.pack(f"<{len(registers)}H", *registers)
    except struct.error as exc:
        raise DecodeError(f"{point.name}: {exc}") from exc
    decoder = _PointDecoder(point, point.address, Layout.of(point, byte_order, word_order))
    return decoder.decode(as_sent, swapped)


def encode(point: ModbusPoint, value: Value,
           byte_order: Order = Order.BIG, word_order: Order = Order.BIG) -> list[int]:
    """The registers that hold `value` as `point`'s type (for a write). Raises EncodeError.

    Integer types accept ints and floats that are whole numbers within float rounding (values arrive here
    after reverse scaling: 21.5 / 0.1 is 215.00000000000003); anything else is not representable and is
    refused, never rounded. Type bit cannot be encoded
    on its own: writing it would need the other 15 bits of the register.
    """
    kind = point.data_type
    if kind in (DataType.BOOL, DataType.BIT):
        raise EncodeError(f"{point.name}: type {kind} is not written as registers")
    layout = Layout.of(point, byte_order, word_order)
    if kind is DataType.STRING:
        raw = _encode_string(point, value)
    else:
        number = _number_for(point, kind, value)
        try:
            raw = struct.pack(layout.endian + _FORMATS[kind], number)
        except (OverflowError, struct.error) as exc:
            raise EncodeError(f"{point.name}: {value} does not fit in a {kind}") from exc
    fmt = f"{'<' if layout.swap_bytes else '>'}{len(raw) // 2}H"
    return list(struct.unpack(fmt, raw))


def encode_bool(point: ModbusPoint, value: Value) -> bool:
    """The state to write to a coil."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise EncodeError(f"{point.name}: a coil takes true/false (or 1/0), not {value!r}")


def _decode_string(data: bytes) -> str:
    text = data.split(b"\x00", 1)[0].rstrip(b" ")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not UTF-8 text: {data!r}") from exc


def _encode_string(point: ModbusPoint, value: Value) -> bytes:
    if not isinstance(value, str):
        raise EncodeError(f"{point.name}: type string takes text, not {value!r}")
    raw = value.encode("utf-8")
    size = point.register_count * 2
    if len(raw) > size:
        raise EncodeError(f"{point.name}: {len(raw)} bytes do not fit in {point.register_count} registers")
    return raw.ljust(size, b"\x00")


def _number_for(point: ModbusPoint, kind: DataType, value: Value) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EncodeError(f"{point.name}: type {kind} takes a number, not {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise EncodeError(f"{point.name}: {value} cannot be written")
    if kind in (DataType.FLOAT32, DataType.FLOAT64):
        return float(value)
    number = round(value)
    if abs(value - number) > 1e-9 * max(1.0, abs(value)):
        raise EncodeError(f"{point.name}: {value} is not a whole number, which a {kind} must hold")
    width, signed = _INTEGER_BITS[kind]
    low, high = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    if not low <= number <= high:
        raise EncodeError(f"{point.name}: {value} is outside the {kind} range {low}..{high}")
    return number


def _bad(name: str) -> Sample:
    return Sample(name, None, Quality.BAD, Reason.DECODE_ERROR.value)
