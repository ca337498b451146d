"""DL/T 645-2007 frames and data formats: published worked examples, round trips, hostile bytes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from drivers.dlt645 import frames
from drivers.dlt645.config import Dlt645Point
from drivers.dlt645.frames import DataFormat, Frame
from drivers.serial.bus import _take_reply
from drivers.serial.frames import NEED_MORE, Accepted, FrameCounters, Rejected, Rejection, address_bytes

ADDRESS = address_bytes("000012345678")


def test_reading_forward_active_energy_sends_the_identifier_plus_33h_lowest_byte_first() -> None:
    wire = frames.encode(frames.read_request(ADDRESS, 0x00010000))
    assert wire.hex(" ") == "fe fe fe fe 68 78 56 34 12 00 00 68 11 04 33 33 34 33 " + \
        f"{sum(wire[4:-2]) & 0xFF:02x} 16"
    assert wire[4:-2].hex() == "687856341200006811043333" + "3433"


def test_published_worked_examples_decode() -> None:
    energy = frames.common_format(0x00010000)
    voltage = frames.common_format(0x02010100)
    assert energy is not None and voltage is not None
    assert frames.decode_value(bytes.fromhex("26000000"), energy) == 0.26  # 0.26 kWh
    assert frames.decode_value(bytes.fromhex("0110"), voltage) == 100.1  # 100.1 V


def test_a_reply_on_the_wire_parses_with_the_offset_removed() -> None:
    reply = Frame(ADDRESS, 0x91, bytes.fromhex("00000100") + bytes.fromhex("26000000"))
    wire = frames.encode(reply)
    assert wire[14:22].hex() == "3333343359333333"  # DI and value, each byte +33H
    outcome = frames.reply_parser(frames.read_request(ADDRESS, 0x00010000))(wire)
    assert outcome == Accepted(reply, len(wire))


@pytest.mark.parametrize(("data_id", "fmt"), [
    (0x00020000, DataFormat(4, 2, "kWh")), (0x02010300, DataFormat(2, 1, "V")),
    (0x02020200, DataFormat(3, 3, "A", signed=True)), (0x02030000, DataFormat(3, 4, "kW", signed=True)),
    (0x02060000, DataFormat(2, 3, "1", signed=True)), (0x02800002, DataFormat(2, 2, "Hz")),
    (0x00000000, DataFormat(4, 2, "kWh", signed=True)),  # combined active energy may be negative
    (0x00030000, DataFormat(4, 2, "kvarh", signed=True)), (0x00040200, DataFormat(4, 2, "kvarh", signed=True)),
    (0x00050000, DataFormat(4, 2, "kvarh")), (0x00080100, DataFormat(4, 2, "kvarh")),  # quadrants I and IV
])
def test_common_identifiers_have_their_formats(data_id: int, fmt: DataFormat) -> None:
    assert frames.common_format(data_id) == fmt


@pytest.mark.parametrize("data_id", [0x00090000, 0x000A0000, 0x000B0000, 0x0001FF00, 0x02010100 | 0xFF00])
def test_apparent_energy_blocks_and_unknown_identifiers_have_no_built_in_format(data_id: int) -> None:
    # Apparent energy is in kVAh, which the unit table lacks: better no format than a kWh label.
    assert frames.common_format(data_id) is None


def point(**raw: object) -> Dlt645Point:
    return TypeAdapter(Dlt645Point).validate_python({"name": "p", "indicator": "active-energy-import", **raw})


def test_a_built_in_identifier_converts_to_the_points_unit_of_the_same_quantity() -> None:
    assert point(data_id="00050000").unit == "kvarh"
    wh = point(data_id="00010000", unit="Wh")
    assert wh.data_format() == DataFormat(4, 2, "kWh")  # the meter still counts in kWh
    assert wh.conversion().apply(0.26) == pytest.approx(260.0)
    assert point(data_id="00010000").conversion().is_identity


@pytest.mark.parametrize("unit", ["V", "kvarh", "furlong"])
def test_a_unit_the_identifiers_value_cannot_be_given_in_is_a_config_error(unit: str) -> None:
    with pytest.raises(ValidationError, match="identifier 00010000 is read in kWh"):
        point(data_id="00010000", unit=unit)


def test_apparent_energy_points_give_their_own_format() -> None:
    with pytest.raises(ValidationError, match="give its size and decimals"):
        point(data_id="00090000")
    custom = point(data_id="00090000", size=4, decimals=2)
    assert custom.data_format() == DataFormat(4, 2, "1") and custom.conversion().is_identity


def test_negative_values_use_the_sign_bit_and_non_bcd_is_an_error() -> None:
    current = DataFormat(3, 3, "A", signed=True)
    assert frames.decode_value(bytes.fromhex("341280"), current) == -1.234
    with pytest.raises(frames.FormatError):
        frames.decode_value(bytes.fromhex("3A1200"), current)
    with pytest.raises(frames.FormatError):
        frames.decode_value(bytes.fromhex("3412"), current)


def test_abnormal_replies_carry_the_error_byte() -> None:
    request = frames.read_request(ADDRESS, 0x02020100)
    wire = frames.encode(Frame(ADDRESS, 0xD1, bytes([0x02])))
    outcome = frames.reply_parser(request)(wire)
    assert isinstance(outcome, Accepted) and outcome.value.error == 0x02


def test_echoes_other_meters_and_other_identifiers_are_rejected() -> None:
    request = frames.read_request(ADDRESS, 0x00010000)
    parse = frames.reply_parser(request)
    assert parse(frames.encode(request)) == Rejected(Rejection.ECHO, 20)
    other = frames.encode(Frame(address_bytes("000000000001"), 0x91, bytes.fromhex("0000010026000000")))
    assert parse(other) == Rejected(Rejection.FOREIGN, len(other))
    other_id = frames.encode(Frame(ADDRESS, 0x91, bytes.fromhex("0001010226000000")))
    assert parse(other_id).kind is Rejection.MALFORMED  # type: ignore[union-attr]


def test_a_wildcard_request_accepts_the_lone_meters_address() -> None:
    request = frames.read_address_request()
    assert frames.encode(request).hex(" ").startswith("fe fe fe fe 68 aa aa aa aa aa aa 68 13 00")
    reply = frames.encode(Frame(ADDRESS, 0x93, ADDRESS))
    outcome = frames.reply_parser(request)(reply)
    assert isinstance(outcome, Accepted) and outcome.value.data == ADDRESS


frames_strategy = st.builds(Frame, st.binary(min_size=6, max_size=6), st.integers(0, 255),
                            st.binary(max_size=64))


@given(frames_strategy, st.integers(0, 4))
def test_decode_of_encode_is_identity(frame: Frame, wake_up: int) -> None:
    wire = frames.encode(frame, wake_up)
    assert frames.parse(wire) == Accepted(frame, len(wire))


@given(frames_strategy, st.data())
def test_a_truncated_frame_is_never_accepted(frame: Frame, data: st.DataObject) -> None:
    wire = frames.encode(frame)
    cut = data.draw(st.integers(0, len(wire) - 1))
    assert frames.parse(wire[:cut]) == NEED_MORE or isinstance(frames.parse(wire[:cut]), Rejected)


@given(st.binary(max_size=300))
def test_random_bytes_never_raise_and_never_yield_a_reading(noise: bytes) -> None:
    request = frames.read_request(ADDRESS, 0x00010000)
    received = bytearray(noise)
    counters = FrameCounters()
    reply = _take_reply(received, frames.encode(request), frames.reply_parser(request), counters)
    if reply is not None:  # only a frame with a valid checksum, from our meter, for our identifier
        fmt = frames.common_format(0x00010000)
        assert fmt is not None
        with contextlib.suppress(frames.FormatError):
            frames.decode_value(reply.value.data[4:], fmt)


@given(st.binary(max_size=40).filter(lambda b: 0x68 not in b), st.floats(0, 999999.99))
def test_the_valid_frame_after_noise_is_found(noise: bytes, value: float) -> None:
    fmt = DataFormat(4, 2, "kWh")
    request = frames.read_request(ADDRESS, 0x00010000)
    reply = Frame(ADDRESS, 0x91, request.data + frames.encode_value(value, fmt))
    received = bytearray(noise + frames.encode(reply))
    counters = FrameCounters()
    accepted = _take_reply(received, frames.encode(request), frames.reply_parser(request), counters)
    assert accepted is not None
    assert frames.decode_value(accepted.value.data[4:], fmt) == pytest.approx(round(value, 2))
    assert counters.noise_bytes <= len(noise) and counters.replies == 0  # the bus counts replies, not _take_reply


@given(st.sampled_from([DataFormat(4, 2, "kWh"), DataFormat(3, 3, "A", signed=True),
                        DataFormat(2, 1, "V"), DataFormat(3, 4, "kW", signed=True)]), st.data())
def test_values_round_trip_through_their_formats(fmt: DataFormat, data: st.DataObject) -> None:
    largest = 10 ** (fmt.size * 2 - (1 if fmt.signed else 0)) - 1  # in units of the last decimal
    units = data.draw(st.integers(-largest if fmt.signed else 0, largest))
    value = units / 10 ** fmt.decimals
    assert frames.decode_value(frames.encode_value(value, fmt), fmt) == pytest.approx(value)


# --- the 1997 edition -------------------------------------------------------------------------------------

def test_the_1997_worked_example_of_a_phase_voltage_read() -> None:
    # Heyuan Intelligence ASDU-LS manual, "1997 DL/645 Protocol Configuration" (screen 9-18): meter
    # 030000000000 asked for B611 (phase A voltage) and its reply 0100 V. Checked by hand:
    #   request 68 03 00 00 00 00 00 68 01 02 44 E9 03 16: DI 11 B6 + 33H = 44 E9;
    #     CS = 68+03+68+01+02+44+E9 = 104+3+104+1+2+68+233 = 515 = 2 x 256 + 03
    #   reply   68 03 00 00 00 00 00 68 81 04 44 E9 33 34 EC 16: value 33 34 - 33H = 00 01, BCD lowest first: 100 V;
    #     CS = 68+03+68+81+04+44+E9+33+34 = 748 = 2 x 256 + EC
    meter = address_bytes("000000000003")
    request = frames.read_request(meter, 0xB611, "1997")
    assert frames.encode(request, wake_up=0).hex(" ") == "68 03 00 00 00 00 00 68 01 02 44 e9 03 16"
    wire = bytes.fromhex("68 03 00 00 00 00 00 68 81 04 44 E9 33 34 EC 16")
    outcome = frames.reply_parser(request)(wire)
    assert isinstance(outcome, Accepted)
    voltage = frames.common_format_1997(0xB611)
    assert voltage is not None and frames.decode_value(outcome.value.data[2:], voltage) == 100.0
    other = frames.reply_parser(frames.read_request(meter, 0xB612, "1997"))(wire)
    assert isinstance(other, Rejected) and other.kind is Rejection.MALFORMED  # another identifier's reply


def test_a_1997_read_of_forward_active_energy_with_the_wildcard_address() -> None:
    # The frame meter-search code quotes for 9010: 68 AA AA AA AA AA AA 68 01 02 43 C3 D5 16. By hand:
    # CS = 68 + 6 x AA + 68 + 01 + 02 + 43 + C3 = 104 + 1020 + 104 + 1 + 2 + 67 + 195 = 1493 = 5 x 256 + D5.
    wire = frames.encode(frames.read_request(bytes([0xAA] * 6), 0x9010, "1997"), wake_up=0)
    assert wire.hex(" ") == "68 aa aa aa aa aa aa 68 01 02 43 c3 d5 16"
    # Its reply, built byte by byte from the 1997 definitions: 81H, DI 10 90, XXXXXX.XX kWh lowest first.
    reply = Frame(ADDRESS, 0x81, bytes.fromhex("1090" "55346202"))
    outcome = frames.reply_parser(frames.read_request(ADDRESS, 0x9010, "1997"))(frames.encode(reply))
    energy = frames.common_format_1997(0x9010)
    assert isinstance(outcome, Accepted) and energy is not None
    assert frames.decode_value(outcome.value.data[2:], energy) == 26234.55


@pytest.mark.parametrize(("data_id", "fmt"), [
    (0x9010, DataFormat(4, 2, "kWh")), (0x9020, DataFormat(4, 2, "kWh")), (0x9013, DataFormat(4, 2, "kWh")),
    (0xB611, DataFormat(2, 0, "V")), (0xB613, DataFormat(2, 0, "V")), (0xB621, DataFormat(2, 2, "A")),
    (0xB630, DataFormat(3, 4, "kW")), (0xB650, DataFormat(2, 3, "1")),
])
def test_common_1997_identifiers_have_their_formats(data_id: int, fmt: DataFormat) -> None:
    assert frames.common_format_1997(data_id) == fmt


def test_identifiers_must_be_of_the_meters_edition() -> None:
    from drivers.registry import protocols

    def meter(edition: str, data_id: str) -> object:
        return protocols()["dlt645"].config_model.model_validate({
            "id": "m", "protocol": "dlt645", "port": "/dev/ttyUSB0", "serial": {"baud": 1200},
            "asset": {"domain": "power-energy", "site": "s", "id": "m", "type": "energy-meter"},
            "address": "000012345678", "edition": edition,
            "points": [{"name": "energy", "indicator": "active-energy-import", "data_id": data_id}]})

    assert meter("1997", "9010") is not None and meter("2007", "00010000") is not None
    with pytest.raises(ValidationError, match="not of the 1997 edition"):
        meter("1997", "00010000")
    with pytest.raises(ValidationError, match="not of the 2007 edition"):
        meter("2007", "9010")
