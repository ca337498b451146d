"""The Modbus TCP driver against a real pymodbus server (our ModbusSimulator) on 127.0.0.1."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from drivers.modbus.client import ReplyTimeout
from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.tables import Table
from drivers.modbus.tcp import ModbusTcpDriver
from gateway.model.driver import DriverError, WriteRefused
from gateway.model.readings import Quality, Sample
from simulators.modbus import ModbusSimulator

HR, IR, COIL, DI = Table.HOLDING_REGISTER, Table.INPUT_REGISTER, Table.COIL, Table.DISCRETE_INPUT


@pytest.fixture
async def simulator() -> AsyncIterator[ModbusSimulator]:
    sim = ModbusSimulator(unit_ids=(1, 2))
    await sim.start()
    yield sim
    await sim.stop()


def make_device(sim: ModbusSimulator, points: list[dict[str, Any]], *, unit_id: int = 1,
                device_id: str = "pump-1", **settings: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate({
        "id": device_id, "protocol": "modbus-tcp", "host": "127.0.0.1", "port": sim.port, "unit_id": unit_id,
        "timeout": 0.3, "asset": {"domain": "water", "site": "north", "id": device_id, "type": "pump"},
        "points": points, **settings,
    })


def point(name: str, address: int, table: Table = HR, **extra: Any) -> dict[str, Any]:
    return {"name": name, "indicator": "pressure", "table": table.value, "address": address, **extra}


async def connected_driver(*devices: ModbusTcpDevice) -> ModbusTcpDriver:
    driver = ModbusTcpDriver(devices)
    await driver.open()
    return driver


def values(samples: list[Sample]) -> dict[str, Any]:
    return {s.point: s.value for s in samples}


def bad(samples: list[Sample]) -> dict[str, str | None]:
    return {s.point: s.reason for s in samples if s.quality is Quality.BAD}


def requests_of(driver: ModbusTcpDriver, device: ModbusTcpDevice) -> list[str]:
    """The requests one poll makes, without the lines saying what the unit taught."""
    return [line for line in driver.describe(device) if not line.startswith(("learned:", "unreadable:"))]


class Clock:
    """A monotonic clock the test moves by hand (for back-off schedules)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- reading ----------------------------------------------------------------------------------------------

EVERY_TYPE: list[tuple[dict[str, Any], list[int], Any]] = [
    (point("u16", 0), [0x1234], 0x1234),
    (point("i16", 1, type="int16"), [0xFFFE], -2),
    (point("i32", 2, type="int32"), [0xFFFF, 0xFFFE], -2),
    (point("u32_cdab", 4, type="uint32", word_order="little"), [0x3344, 0x1122], 0x11223344),
    (point("f32", 6, type="float32"), [0x3FC0, 0x0000], 1.5),
    (point("f64_dcba", 8, type="float64", byte_order="little", word_order="little"), [0, 0, 0, 0xF03F], 1.0),
    (point("i64", 12, type="int64"), [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], -2),
    (point("u64_badc", 16, type="uint64", byte_order="little"), [0x2211, 0x4433, 0x6655, 0x8877],
     0x1122334455667788),
    (point("name", 20, type="string", length=4), list(struct.unpack(">4H", b"PUMP-7\x00\x00")), "PUMP-7"),
    (point("alarm", 24, type="bit", bit=3), [0x0008], True),
]


async def test_every_type_reads_correctly_from_a_live_server(simulator: ModbusSimulator) -> None:
    for spec, registers, _ in EVERY_TYPE:
        simulator.set_registers(1, HR, spec["address"], registers)
    simulator.set_registers(1, IR, 0, [0xC2F6, 0x8000])
    simulator.set_bits(1, COIL, 5, [True, False])
    simulator.set_bits(1, DI, 7, [True])
    device = make_device(simulator, [spec for spec, _, _ in EVERY_TYPE] + [
        point("flow", 0, IR, type="float32"), point("run", 5, COIL), point("stop", 6, COIL),
        point("door", 7, DI)])
    driver = await connected_driver(device)
    try:
        samples = await driver.read(device)
    finally:
        await driver.close()
    assert [s.point for s in samples] == [p.name for p in device.points]  # config order
    assert all(s.quality is Quality.GOOD and s.reason is None and s.source_time_ms is None for s in samples)
    expected = {spec["name"]: value for spec, _, value in EVERY_TYPE}
    expected.update(flow=-123.25, run=True, stop=False, door=True)
    assert values(samples) == expected


async def test_device_default_orders_apply_to_points_without_their_own(simulator: ModbusSimulator) -> None:
    simulator.set_registers(1, HR, 0, [0x4433, 0x2211])
    device = make_device(simulator, [point("total", 0, type="uint32")], byte_order="little", word_order="little")
    driver = await connected_driver(device)
    assert values(await driver.read(device)) == {"total": 0x11223344}
    await driver.close()


async def test_one_poll_makes_exactly_the_planned_requests(simulator: ModbusSimulator) -> None:
    device = make_device(simulator, [point(f"r{i}", i * 3) for i in range(30)] + [
        point("far", 500), point("c1", 0, COIL), point("c2", 10, COIL), point("i1", 3, IR)])
    driver = await connected_driver(device)
    plan = driver.describe(device)
    assert plan == ["coil 0-10 (11 bits, 2 points)", "input_register 3-3 (1 register, 1 point)",
                    "holding_register 0-87 (88 registers, 30 points)", "holding_register 500-500 (1 register, 1 point)"]
    for _ in range(3):
        before = simulator.requests[1]
        await driver.read(device)
        assert simulator.requests[1] - before == len(plan)
    assert driver.counters(device)["requests"] == 3 * len(plan)
    await driver.close()


async def test_devices_on_one_gateway_share_the_link_but_not_their_data(simulator: ModbusSimulator) -> None:
    simulator.set_registers(1, HR, 0, [11])
    simulator.set_registers(2, HR, 0, [22])
    first = make_device(simulator, [point("level", 0)], unit_id=1, device_id="tank-1")
    second = make_device(simulator, [point("level", 0)], unit_id=2, device_id="tank-2")
    driver = await connected_driver(first, second)
    assert values(await driver.read(first)) == {"level": 11}
    assert values(await driver.read(second)) == {"level": 22}
    assert (simulator.requests[1], simulator.requests[2]) == (1, 1)
    assert driver.counters(first)["requests"] == driver.counters(second)["requests"] == 1
    await driver.close()


async def test_values_changed_on_the_device_show_on_the_next_poll(simulator: ModbusSimulator) -> None:
    device = make_device(simulator, [point("level", 10)])
    driver = await connected_driver(device)
    simulator.set_registers(1, HR, 10, [1])
    assert values(await driver.read(device)) == {"level": 1}
    simulator.set_registers(1, HR, 10, [2])
    assert values(await driver.read(device)) == {"level": 2}
    await driver.close()


async def test_undecodable_values_are_bad_samples_and_counted(simulator: ModbusSimulator) -> None:
    simulator.set_registers(1, HR, 0, [0x7FC0, 0x0000, 0xFFFF, 42])
    device = make_device(simulator, [point("nan", 0, type="float32"), point("text", 2, type="string", length=1),
                                     point("fine", 3)])
    driver = await connected_driver(device)
    samples = await driver.read(device)
    assert bad(samples) == {"nan": "decode-error", "text": "decode-error"}
    assert values(samples)["fine"] == 42
    assert driver.counters(device)["decode_errors"] == 2
    await driver.close()


# --- exception replies and splitting -------------------------------------------------------------------------

async def test_a_refused_hole_in_a_bridged_gap_is_split_around_and_remembered(simulator: ModbusSimulator) -> None:
    points = [point(f"a{i}", i) for i in range(4)] + [point(f"b{i}", 10 + i) for i in range(4)]
    simulator.set_registers(1, HR, 0, list(range(100, 114)))
    simulator.refuse(HR, 6, 7, unit=1)  # the device has no registers 6-7; no point lives there
    device = make_device(simulator, points)
    driver = await connected_driver(device)
    assert driver.describe(device) == ["holding_register 0-13 (14 registers, 8 points)"]

    first = await driver.read(device)

    assert all(s.quality is Quality.GOOD for s in first)
    assert values(first) == {**{f"a{i}": 100 + i for i in range(4)}, **{f"b{i}": 110 + i for i in range(4)}}
    assert requests_of(driver, device) == ["holding_register 0-3 (4 registers, 4 points)",
                                           "holding_register 10-13 (4 registers, 4 points)"]
    assert "learned: holding_register 4-9 holds an address the unit refuses; no request spans it" in (
        driver.describe(device))
    counters = driver.counters(device)
    assert (counters["requests"], counters["exception_replies"]) == (3, 1)
    # The next poll goes straight to the two requests that work.
    before = simulator.requests[1]
    assert values(await driver.read(device)) == values(first)
    assert simulator.requests[1] - before == 2
    counters = driver.counters(device)
    assert (counters["requests"], counters["exception_replies"]) == (5, 1)
    await driver.close()


async def test_a_point_refused_alone_is_reported_unreadable_once_and_the_rest_merge_around_it(
        simulator: ModbusSimulator) -> None:
    simulator.set_registers(1, HR, 0, list(range(50, 58)))
    simulator.refuse(HR, 5, 5, unit=1)
    device = make_device(simulator, [point(f"p{i}", i) for i in range(8)])
    driver = await connected_driver(device)

    samples = await driver.read(device)

    assert bad(samples) == {"p5": "unreadable"}
    assert {k: v for k, v in values(samples).items() if k != "p5"} == {f"p{i}": 50 + i for i in range(8) if i != 5}
    failed_first_poll = driver.counters(device)["exception_replies"]
    assert failed_first_poll == 4  # 8 points -> 4 -> 2 -> p5 alone, each refused once
    assert requests_of(driver, device) == ["holding_register 0-4 (5 registers, 5 points)",
                                           "holding_register 6-7 (2 registers, 2 points)"]
    assert driver.counters(device)["unreadable_points"] == 1

    requests_before = driver.counters(device)["requests"]
    samples = await driver.read(device)
    assert "p5" not in {s.point for s in samples}  # reported once, not every poll
    assert bad(samples) == {}
    assert driver.counters(device)["exception_replies"] == failed_first_poll  # and not asked again
    assert driver.counters(device)["requests"] - requests_before == 2
    await driver.close()


async def test_an_unreadable_point_is_tried_again_on_its_back_off_and_reads_once_the_device_has_it(
        simulator: ModbusSimulator) -> None:
    simulator.refuse(HR, 1, 1, unit=1)
    clock = Clock()
    device = make_device(simulator, [point("a", 0), point("b", 1)], poll_interval=10)
    driver = ModbusTcpDriver([device], clock=clock)
    await driver.open()
    assert bad(await driver.read(device)) == {"b": "unreadable"}
    asked = simulator.requests[1]
    clock.now += 19.9  # the first retry comes after two poll intervals
    assert [s.point for s in await driver.read(device)] == ["a"]
    assert simulator.requests[1] - asked == 1

    clock.now += 0.1
    asked = simulator.requests[1]
    assert [s.point for s in await driver.read(device)] == ["a"]  # tried, still refused: not reported again
    assert simulator.requests[1] - asked == 2
    assert driver.counters(device)["exception_replies"] == 3  # a+b, b alone, b's retry

    simulator.refusals.clear()
    simulator.set_registers(1, HR, 1, [9])
    clock.now += 40  # the second retry waits twice as long
    samples = await driver.read(device)
    assert bad(samples) == {} and values(samples) == {"a": 0, "b": 9}
    assert requests_of(driver, device) == ["holding_register 0-1 (2 registers, 2 points)"]  # merged again
    await driver.close()


async def test_a_point_refused_alone_with_04_is_bad_and_read_alone_without_shrinking_the_others(
        simulator: ModbusSimulator) -> None:
    simulator.refuse(HR, 0, 0, code=4, unit=1)
    simulator.set_registers(1, HR, 1, [5, 6])
    device = make_device(simulator, [point("a", 0), point("b", 1), point("c", 2), point("other", 0, IR)])
    driver = await connected_driver(device)
    samples = await driver.read(device)
    assert bad(samples) == {"a": "device-exception:04"}
    assert values(samples) == {"a": None, "b": 5, "c": 6, "other": 0}
    assert requests_of(driver, device) == ["input_register 0-0 (1 register, 1 point)",
                                           "holding_register 0-0 (1 register, 1 point)",
                                           "holding_register 1-2 (2 registers, 2 points)"]
    assert not any("per request" in line for line in driver.describe(device))  # no size limit was learnt
    assert bad(await driver.read(device)) == {"a": "device-exception:04"}
    await driver.close()


async def test_a_unit_missing_behind_the_gateway_answers_0b(simulator: ModbusSimulator) -> None:
    device = make_device(simulator, [point("a", 0)], unit_id=9)
    driver = await connected_driver(device)
    assert bad(await driver.read(device)) == {"a": "device-exception:0B"}
    await driver.close()


# --- link failures ----------------------------------------------------------------------------------------

async def test_read_before_open_raises_driver_error(simulator: ModbusSimulator) -> None:
    device = make_device(simulator, [point("a", 0)])
    driver = ModbusTcpDriver([device])
    with pytest.raises(DriverError, match="not connected"):
        await driver.read(device)


async def test_open_is_idempotent(simulator: ModbusSimulator) -> None:
    device = make_device(simulator, [point("a", 0)])
    driver = await connected_driver(device)
    await driver.open()
    assert driver.connected
    assert values(await driver.read(device)) == {"a": 0}
    assert simulator.connections == 1  # opening an open link keeps its connection
    await driver.close()
    await driver.close()  # closing twice is harmless
    assert not driver.connected


async def test_a_stopped_server_raises_driver_error_and_a_restart_recovers(simulator: ModbusSimulator) -> None:
    simulator.set_registers(1, HR, 0, [7])
    device = make_device(simulator, [point("a", 0)])
    driver = await connected_driver(device)
    assert values(await driver.read(device)) == {"a": 7}

    await simulator.stop()
    with pytest.raises(DriverError):
        await driver.read(device)
    assert not driver.connected
    with pytest.raises(DriverError, match="cannot connect"):
        await driver.open()

    await simulator.start()
    await driver.open()
    assert values(await driver.read(device)) == {"a": 7}
    assert simulator.connections == 2  # the lost connection was replaced by a new one
    await driver.close()


async def test_no_reply_is_a_timeout_and_the_link_stays_usable(simulator: ModbusSimulator) -> None:
    simulator.set_registers(1, HR, 0, [7])
    device = make_device(simulator, [point("a", 0)])
    driver = await connected_driver(device)
    simulator.reply_mangler = lambda reply: b""
    with pytest.raises(ReplyTimeout):
        await driver.read(device)
    assert driver.counters(device)["timeouts"] == 1
    simulator.reply_mangler = None
    await driver.open()
    assert values(await driver.read(device)) == {"a": 7}
    assert simulator.connections == 1  # one device's silence did not cost the connection
    await driver.close()


def _with_registers_dropped(reply: bytes) -> bytes:
    """A well-framed read reply carrying one register less than asked for."""
    length = int.from_bytes(reply[4:6], "big") - 2
    return reply[:4] + length.to_bytes(2, "big") + reply[6:8] + bytes([reply[8] - 2]) + reply[9:-2]


GARBAGE: dict[str, Callable[[bytes], bytes]] = {
    "noise": lambda reply: b"\x13\x37" * 20,
    "truncated": lambda reply: reply[:-1],
    "one-register-short": _with_registers_dropped,
    "byte-count-lies": lambda reply: reply[:8] + b"\xf0" + reply[9:],
    "odd-byte-count": lambda reply: reply[:4] + b"\x00\x06" + reply[6:8] + b"\x03\x00\x01\x02",
    "wrong-function": lambda reply: reply[:7] + b"\x04" + reply[8:],
    "unknown-function": lambda reply: reply[:7] + b"\x55" + reply[8:],
    "unknown-exception": lambda reply: reply[:4] + b"\x00\x03" + reply[6:7] + b"\x83\x42",
    "wrong-unit": lambda reply: reply[:6] + b"\x63" + reply[7:],
    "wrong-transaction": lambda reply: b"\x7f\x7f" + reply[2:],
    "twice": lambda reply: reply + reply,
    "header-only": lambda reply: reply[:7],
}


@pytest.mark.parametrize("mangle", GARBAGE.values(), ids=GARBAGE.keys())
async def test_garbage_replies_never_crash_the_driver(simulator: ModbusSimulator,
                                                      mangle: Callable[[bytes], bytes]) -> None:
    simulator.set_registers(1, HR, 0, [1, 2, 3, 4])
    device = make_device(simulator, [point("a", 0), point("b", 1, type="int32"), point("c", 3)])
    driver = await connected_driver(device)
    simulator.reply_mangler = mangle
    try:
        samples = await driver.read(device)
    except DriverError:
        pass  # the device as a whole failed: the scheduler marks it bad
    else:
        assert [s.point for s in samples] == ["a", "b", "c"]
        for sample in samples:
            assert sample.quality is Quality.GOOD or sample.value is None
            assert sample.quality is Quality.GOOD or (sample.reason or "").startswith(
                ("decode-error", "device-exception:"))
    simulator.reply_mangler = None
    await driver.open()  # reconnects if the garbage cost the connection
    assert values(await driver.read(device)) == {"a": 1, "b": 0x00020003, "c": 4}
    await driver.close()


async def test_a_reply_of_the_wrong_length_is_a_decode_error(simulator: ModbusSimulator) -> None:
    device = make_device(simulator, [point("a", 0), point("b", 1)])
    driver = await connected_driver(device)
    simulator.reply_mangler = _with_registers_dropped
    assert bad(await driver.read(device)) == {"a": "decode-error", "b": "decode-error"}
    assert driver.counters(device)["decode_errors"] == 2
    await driver.close()


# --- writes -----------------------------------------------------------------------------------------------

async def test_writable_points_are_written(simulator: ModbusSimulator) -> None:
    device = make_device(simulator, [
        point("setpoint", 10, type="float32", writable=True, word_order="little"),
        point("mode", 20, type="uint16", writable=True),
        point("pump_on", 3, COIL, writable=True)])
    driver = await connected_driver(device)
    assert await driver.write(device, "setpoint", 1.5) == 1.5  # each write returns the value read back
    assert await driver.write(device, "mode", 3) == 3
    assert await driver.write(device, "pump_on", True) is True
    assert simulator.get_registers(1, HR, 10, 2) == [0x0000, 0x3FC0]
    assert simulator.get_registers(1, HR, 20, 1) == [3]
    assert simulator.get_bits(1, COIL, 3, 1) == [True]
    assert values(await driver.read(device)) == {"setpoint": 1.5, "mode": 3, "pump_on": True}
    await driver.close()


@pytest.mark.parametrize(("name", "value", "message"), [
    ("level", 1, "not declared writable"),
    ("input", 1, "read-only input_register"),
    ("flag", True, "one bit of a register"),
    ("missing", 1, "has no point"),
    ("mode", 70000, "outside the uint16 range"),
    ("mode", 2.5, "not a whole number"),
])
async def test_writes_that_cannot_happen_are_refused(simulator: ModbusSimulator, name: str, value: Any,
                                                     message: str) -> None:
    simulator.refuse(HR, 30, 30, unit=1)
    device = make_device(simulator, [
        point("level", 0), point("input", 0, IR, writable=True), point("flag", 1, type="bit", bit=2, writable=True),
        point("mode", 20, writable=True), point("refused", 30, writable=True)])
    driver = await connected_driver(device)
    with pytest.raises(WriteRefused, match=message):
        await driver.write(device, name, value)
    assert simulator.get_registers(1, HR, 0, 40) == [0] * 40
    await driver.close()


async def test_a_write_the_unit_refuses_fails_with_its_exception_and_keeps_the_link(simulator: ModbusSimulator) -> None:
    simulator.refuse(HR, 30, 30, unit=1)
    device = make_device(simulator, [point("mode", 20, writable=True), point("refused", 30, writable=True)])
    driver = await connected_driver(device)
    with pytest.raises(DriverError, match="exception 02 illegal data address") as failure:
        await driver.write(device, "refused", 1)
    assert (failure.value.reason, failure.value.link_lost) == ("device-exception:02", False)
    assert await driver.write(device, "mode", 7) == 7
    await driver.close()


# --- construction -----------------------------------------------------------------------------------------

async def test_an_unplannable_device_is_refused(simulator: ModbusSimulator) -> None:
    with pytest.raises(ValueError, match="label"):
        make_device(simulator, [point("label", 0, type="string", length=30)], max_registers_per_request=20)

