"""Decoding and encoding of every Modbus data type in every byte/word order."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from drivers.modbus.codec import (
    BitBlockDecoder,
    DecodeError,
    EncodeError,
    RegisterBlockDecoder,
    decode_point,
    encode,
    encode_bool,
)
from drivers.modbus.config import ModbusPoint
from drivers.modbus.tables import REGISTER_COUNT, DataType, Order
from gateway.model.readings import Quality, Sample

BIG, LITTLE = Order.BIG, Order.LITTLE
ORDERS = [(BIG, BIG), (LITTLE, LITTLE), (BIG, LITTLE), (LITTLE, BIG)]  # (byte order, word order)


def make_point(kind: str, address: int = 0, name: str = "p", **extra: Any) -> ModbusPoint:
    return TypeAdapter(ModbusPoint).validate_python({"name": name, "indicator": "x", "table": "holding_register",
                                                     "address": address, "type": kind, **extra})


# Each value's registers in the four orders, written out by hand from the bytes
# A B C D ... of the value (see the codec module docstring).
KNOWN: list[tuple[str, Any, dict[tuple[Order, Order], list[int]]]] = [
    ("uint16", 0x1234, {(BIG, BIG): [0x1234], (LITTLE, LITTLE): [0x3412],
                        (BIG, LITTLE): [0x1234], (LITTLE, BIG): [0x3412]}),
    ("int16", -2, {(BIG, BIG): [0xFFFE], (LITTLE, LITTLE): [0xFEFF],
                   (BIG, LITTLE): [0xFFFE], (LITTLE, BIG): [0xFEFF]}),
    ("uint32", 0x11223344, {(BIG, BIG): [0x1122, 0x3344], (LITTLE, LITTLE): [0x4433, 0x2211],
                            (BIG, LITTLE): [0x3344, 0x1122], (LITTLE, BIG): [0x2211, 0x4433]}),
    ("int32", -0x11223345, {(BIG, BIG): [0xEEDD, 0xCCBB], (LITTLE, LITTLE): [0xBBCC, 0xDDEE],
                                (BIG, LITTLE): [0xCCBB, 0xEEDD], (LITTLE, BIG): [0xDDEE, 0xBBCC]}),
    ("uint64", 0x1122334455667788, {
        (BIG, BIG): [0x1122, 0x3344, 0x5566, 0x7788], (LITTLE, LITTLE): [0x8877, 0x6655, 0x4433, 0x2211],
        (BIG, LITTLE): [0x7788, 0x5566, 0x3344, 0x1122], (LITTLE, BIG): [0x2211, 0x4433, 0x6655, 0x8877]}),
    ("int64", -2, {
        (BIG, BIG): [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], (LITTLE, LITTLE): [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF],
        (BIG, LITTLE): [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF], (LITTLE, BIG): [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF]}),
    ("float32", 1.5, {(BIG, BIG): [0x3FC0, 0x0000], (LITTLE, LITTLE): [0x0000, 0xC03F],
                      (BIG, LITTLE): [0x0000, 0x3FC0], (LITTLE, BIG): [0xC03F, 0x0000]}),
    ("float32", -123.25, {(BIG, BIG): [0xC2F6, 0x8000], (LITTLE, LITTLE): [0x0080, 0xF6C2],
                          (BIG, LITTLE): [0x8000, 0xC2F6], (LITTLE, BIG): [0xF6C2, 0x0080]}),
    ("float64", 1.0, {
        (BIG, BIG): [0x3FF0, 0, 0, 0], (LITTLE, LITTLE): [0, 0, 0, 0xF03F],
        (BIG, LITTLE): [0, 0, 0, 0x3FF0], (LITTLE, BIG): [0xF03F, 0, 0, 0]}),
]


@pytest.mark.parametrize(("kind", "value", "by_order"), KNOWN, ids=[f"{k}={v}" for k, v, _ in KNOWN])
@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS, ids=["ABCD", "DCBA", "CDAB", "BADC"])
def test_known_vectors_decode_and_encode(kind: str, value: Any, by_order: dict[tuple[Order, Order], list[int]],
                                         byte_order: Order, word_order: Order) -> None:
    registers = by_order[(byte_order, word_order)]
    point = make_point(kind)
    assert decode_point(point, registers, byte_order, word_order) == value
    assert encode(point, value, byte_order, word_order) == registers


def test_the_int32_vector_is_what_the_table_says() -> None:
    # -0x11223345 is 0xEEDDCCBB in two's complement: guards the hand-written table above.
    assert struct.pack(">i", -0x11223345) == bytes.fromhex("EEDDCCBB")


@pytest.mark.parametrize(("byte_order", "registers"), [(BIG, [0x4142, 0x4300]), (LITTLE, [0x4241, 0x0043])])
@pytest.mark.parametrize("word_order", [BIG, LITTLE])
def test_strings_follow_register_order_and_the_byte_order(byte_order: Order, registers: list[int],
                                                          word_order: Order) -> None:
    point = make_point("string", length=2)
    assert decode_point(point, registers, byte_order, word_order) == "ABC"
    assert encode(point, "ABC", byte_order, word_order) == registers


def test_strings_lose_trailing_nuls_and_spaces_and_stop_at_the_first_nul() -> None:
    point = make_point("string", length=4)
    assert decode_point(point, list(struct.unpack(">4H", b"PUMP 1  "))) == "PUMP 1"
    assert decode_point(point, list(struct.unpack(">4H", b"P2\x00\x00\x00\x00\x00\x00"))) == "P2"
    assert decode_point(point, list(struct.unpack(">4H", b"OK\x00junk!"))) == "OK"
    assert decode_point(point, list(struct.unpack(">4H", "Zürich".encode() + b"\x00"))) == "Zürich"


def test_undecodable_text_is_a_decode_error() -> None:
    point = make_point("string", length=2)
    with pytest.raises(DecodeError):
        decode_point(point, [0xFFFE, 0x4142])


@pytest.mark.parametrize(("registers", "bit", "expected"), [
    ([0x8001], 0, True), ([0x8001], 15, True), ([0x8001], 1, False), ([0x0100], 8, True), ([0x0100], 0, False)])
def test_bit_is_a_bit_of_the_register_value(registers: list[int], bit: int, expected: bool) -> None:
    assert decode_point(make_point("bit", bit=bit), registers) is expected


def test_bit_uses_the_byte_order_of_the_register() -> None:
    # 0x0100 read with little byte order is the value 0x0001: bit 0 set.
    assert decode_point(make_point("bit", bit=0), [0x0100], LITTLE, BIG) is True


@pytest.mark.parametrize("registers", [[0x7FC0, 0x0000], [0x7F80, 0x0000], [0xFF80, 0x0000]],
                         ids=["nan", "inf", "-inf"])
def test_nan_and_infinite_float32_are_decode_errors(registers: list[int]) -> None:
    with pytest.raises(DecodeError):
        decode_point(make_point("float32"), registers)


def test_nan_float64_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_point(make_point("float64"), [0x7FF8, 0, 0, 0])


def test_block_decoder_reads_each_point_at_its_offset_with_its_own_orders() -> None:
    points = [
        make_point("uint32", 100, "default_orders"),
        make_point("uint32", 102, "swapped_words", word_order="little"),
        make_point("int16", 104, "little_bytes", byte_order="little"),
        make_point("uint16", 101, "overlapping"),
        make_point("string", 105, "label", length=2),
    ]
    decoder = RegisterBlockDecoder(100, 7, points, BIG, BIG)
    samples, errors = decoder.decode([0x0001, 0x0002, 0x0002, 0x0001, 0xFFFE, 0x4F4B, 0x0000])
    assert errors == 0
    assert samples == [
        Sample("default_orders", 0x00010002), Sample("swapped_words", 0x00010002),
        Sample("little_bytes", -257), Sample("overlapping", 2),
        Sample("label", "OK")]


def test_device_default_orders_apply_when_a_point_has_none() -> None:
    points = [make_point("uint32", 0, "a"), make_point("uint32", 2, "b", word_order="big", byte_order="big")]
    samples, _ = RegisterBlockDecoder(0, 4, points, LITTLE, LITTLE).decode([0x4433, 0x2211, 0x1122, 0x3344])
    assert [s.value for s in samples] == [0x11223344, 0x11223344]


def test_block_decoder_marks_only_the_undecodable_points_bad() -> None:
    points = [make_point("float32", 0, "nan"), make_point("uint16", 2, "fine"),
              make_point("string", 3, "text", length=1)]
    samples, errors = RegisterBlockDecoder(0, 4, points, BIG, BIG).decode([0x7FC0, 0x0000, 7, 0xC328])
    assert errors == 2
    assert samples[1] == Sample("fine", 7)
    for bad in (samples[0], samples[2]):
        assert (bad.value, bad.quality, bad.reason) == (None, Quality.BAD, "decode-error")


@pytest.mark.parametrize("registers", [[1, 2, 3], [1, 2, 3, 4, 5], [1, 70000, 3, 4], [-1, 0, 0, 0]],
                         ids=["short", "long", "too-big", "negative"])
def test_block_decoder_turns_a_bad_block_into_bad_samples(registers: list[int]) -> None:
    points = [make_point("uint32", 0, "a"), make_point("uint16", 3, "b")]
    samples, errors = RegisterBlockDecoder(0, 4, points, BIG, BIG).decode(registers)
    assert errors == 2
    assert all(s.quality is Quality.BAD and s.reason == "decode-error" for s in samples)


def test_bit_block_decoder() -> None:
    points = [TypeAdapter(ModbusPoint).validate_python({"name": n, "indicator": "x", "table": "coil", "address": a})
              for n, a in (("first", 10), ("third", 12))]
    decoder = BitBlockDecoder(10, 3, points)
    assert decoder.decode([True, False, False]) == ([Sample("first", True), Sample("third", False)], 0)
    samples, errors = decoder.decode([True])
    assert errors == 2 and all(s.quality is Quality.BAD for s in samples)


@pytest.mark.parametrize(("kind", "value", "message"), [
    ("int16", 40000, "outside the int16 range"), ("uint16", -1, "outside the uint16 range"),
    ("uint64", 2**64, "outside the uint64 range"), ("int32", "12", "takes a number"),
    ("int32", True, "takes a number"), ("float32", math.nan, "cannot be written"),
    ("float32", 1e39, "does not fit"), ("float64", math.inf, "cannot be written"),
])
def test_values_that_do_not_fit_are_refused(kind: str, value: Any, message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        encode(make_point(kind), value)


def test_string_encoding_pads_with_nuls_and_refuses_long_text() -> None:
    point = make_point("string", length=2)
    assert encode(point, "A") == [0x4100, 0x0000]
    with pytest.raises(EncodeError, match="do not fit"):
        encode(point, "ABCDE")
    with pytest.raises(EncodeError, match="takes text"):
        encode(point, 5)


def test_integer_types_take_whole_floats_from_reverse_scaling_and_refuse_fractions() -> None:
    assert encode(make_point("int16"), 215.00000000000003) == [215]
    assert encode(make_point("int16"), -2.0) == [0xFFFE]
    with pytest.raises(EncodeError, match="not a whole number"):
        encode(make_point("int16"), -1.6)


def test_bits_and_bools_are_not_register_values() -> None:
    with pytest.raises(EncodeError):
        encode(make_point("bit", bit=3), 1)


def test_coil_values() -> None:
    coil = TypeAdapter(ModbusPoint).validate_python({"name": "c", "indicator": "x", "table": "coil", "address": 0})
    assert encode_bool(coil, True) is True
    assert encode_bool(coil, 0) is False
    with pytest.raises(EncodeError):
        encode_bool(coil, 2)
    with pytest.raises(EncodeError):
        encode_bool(coil, "on")


# --- round trips ----------------------------------------------------------------------------------------

def _integers(bits: int, signed: bool) -> st.SearchStrategy[int]:
    return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else st.integers(0, (1 << bits) - 1)


VALUES: dict[DataType, st.SearchStrategy[Any]] = {
    DataType.INT16: _integers(16, True), DataType.UINT16: _integers(16, False),
    DataType.INT32: _integers(32, True), DataType.UINT32: _integers(32, False),
    DataType.INT64: _integers(64, True), DataType.UINT64: _integers(64, False),
    DataType.FLOAT32: st.floats(width=32, allow_nan=False, allow_infinity=False),
    DataType.FLOAT64: st.floats(allow_nan=False, allow_infinity=False),
    DataType.STRING: st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FFF), max_size=8),
}


@settings(max_examples=400, deadline=None)
@given(data=st.data(), kind=st.sampled_from(sorted(VALUES)), orders=st.sampled_from(ORDERS),
       point_orders=st.sampled_from([None, *ORDERS]))
def test_encode_then_decode_gives_the_value_back(data: st.DataObject, kind: DataType,
                                                 orders: tuple[Order, Order],
                                                 point_orders: tuple[Order, Order] | None) -> None:
    value = data.draw(VALUES[kind])
    extra: dict[str, Any] = {"length": 12} if kind is DataType.STRING else {}
    if point_orders is not None:
        extra.update(byte_order=point_orders[0].value, word_order=point_orders[1].value)
    point = make_point(kind.value, 3, **extra)
    registers = encode(point, value, *orders)
    assert len(registers) == point.register_count
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode_point(point, registers, *orders) == value
    # And the same through a block decoder, at an offset inside a larger response.
    samples, errors = RegisterBlockDecoder(1, point.register_count + 4, [point], *orders).decode(
        [0xAAAA, 0xBBBB, *registers, 0xCCCC, 0xDDDD])
    assert (errors, samples) == (0, [Sample("p", value)])


@settings(max_examples=200, deadline=None)
@given(registers=st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4), orders=st.sampled_from(ORDERS),
       kind=st.sampled_from([DataType.UINT64, DataType.INT64, DataType.FLOAT64]))
def test_decode_then_encode_gives_the_registers_back(registers: list[int], orders: tuple[Order, Order],
                                                     kind: DataType) -> None:
    point = make_point(kind.value)
    try:
        value = decode_point(point, registers, *orders)
    except DecodeError:
        return  # NaN / infinity
    assert encode(point, value, *orders) == registers


@settings(max_examples=300, deadline=None)
@given(data=st.data(), orders=st.sampled_from(ORDERS))
def test_a_block_decodes_every_point_as_it_would_alone(data: st.DataObject, orders: tuple[Order, Order]) -> None:
    # Points of every type and order, overlapping or not, decoded from one block with a struct per run of
    # points sharing a layout: each value equals the one its own registers give.
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=24, max_size=24), label="registers")
    points = []
    for index in range(data.draw(st.integers(1, 8), label="points")):
        kind = data.draw(st.sampled_from([k for k in DataType if k is not DataType.BOOL]), label="type")
        extra: dict[str, Any] = {"length": 3} if kind is DataType.STRING else {}
        if kind is DataType.BIT:
            extra["bit"] = data.draw(st.integers(0, 15), label="bit")
        if data.draw(st.booleans(), label="own orders"):
            byte, word = data.draw(st.sampled_from(ORDERS), label="orders")
            extra.update(byte_order=byte.value, word_order=word.value)
        address = data.draw(st.integers(0, 24 - (3 if kind is DataType.STRING else REGISTER_COUNT.get(kind, 1))))
        points.append(make_point(kind.value, address, name=f"p{index}", **extra))
    samples, errors = RegisterBlockDecoder(0, 24, points, *orders).decode(registers)
    alone: dict[str, Sample] = {}
    for point in points:
        own = registers[point.address:point.address + point.register_count]
        try:
            alone[point.name] = Sample(point.name, decode_point(point, own, *orders))
        except DecodeError:
            alone[point.name] = Sample(point.name, None, Quality.BAD, "decode-error")
    assert {s.point: s for s in samples} == alone
    assert errors == sum(s.quality is Quality.BAD for s in alone.values())
