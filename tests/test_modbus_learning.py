"""One learning plan per link and unit, against real pymodbus servers: devices sharing a unit share their
requests (counted by the simulator itself), a strict-gap PLC and a meter with an 80-register limit are
learnt down to the fewest requests that succeed, and what was learnt survives a restart in the state
directory (and is dropped when the configuration changes). Also the `degraded` state of a device that
answers but reads nothing, and the pure rules of what is learnt (drivers/modbus/learning.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.learning import TableKnowledge
from drivers.modbus.tables import Table
from drivers.modbus.tcp import ModbusTcpDriver
from gateway.links import DeviceState, DeviceStatus, LinkRunner
from gateway.model.devices import DeviceBase
from gateway.model.driver import LinkContext
from gateway.model.readings import Quality, Sample
from simulators.modbus import ModbusSimulator, StrictGapSimulator

HR, COIL = Table.HOLDING_REGISTER, Table.COIL

# A pump-station PLC modelled as four devices (the station and three pumps, one per asset) on unit 1.
# The PLC has holding registers 0-9 and 20-30 only, and refuses (02) any read bridging 10-19.
PLC_BLOCKS = {HR: [(0, 9), (20, 30)], COIL: [(0, 15)]}
PLC_DEVICES: dict[str, list[tuple[str, Table, int, str]]] = {
    "station": [("status", HR, 0, "uint16"), *((f"level{i}", HR, i, "uint16") for i in range(1, 8)),
                ("flow", HR, 20, "float32"), ("alarm", COIL, 0, "bool")],
    "pump-1": [("status", HR, 0, "uint16"), ("speed", HR, 8, "uint16"), ("power", HR, 24, "float32"),
               ("running", COIL, 1, "bool")],
    "pump-2": [("status", HR, 0, "uint16"), ("speed", HR, 9, "uint16"), ("power", HR, 26, "float32"),
               ("running", COIL, 2, "bool")],
    "pump-3": [("status", HR, 0, "uint16"), ("hours", HR, 28, "uint32"), ("temperature", HR, 30, "int16"),
               ("running", COIL, 3, "bool")],
}


def device(sim: ModbusSimulator, device_id: str, points: Sequence[tuple[str, Table, int, str]],
           **settings: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate({
        "id": device_id, "protocol": "modbus-tcp", "host": "127.0.0.1", "port": sim.port, "unit_id": 1,
        "timeout": 2.0, "asset": {"domain": "water", "site": "ps01", "id": device_id, "type": "pump"},
        "points": [{"name": name, "indicator": "pressure", "table": table.value, "address": address, "type": kind}
                   for name, table, address, kind in points], **settings})


def plc_devices(sim: ModbusSimulator) -> list[ModbusTcpDevice]:
    return [device(sim, device_id, points) for device_id, points in PLC_DEVICES.items()]


def requests_of(driver: ModbusTcpDriver, devices: Sequence[ModbusTcpDevice]) -> set[str]:
    """The distinct requests a round of polls of `devices` makes (shared ones once)."""
    return {line.split(" (")[0] for d in devices for line in driver.describe(d)
            if not line.startswith(("learned:", "unreadable:"))}


async def poll_round(driver: ModbusTcpDriver, devices: Sequence[ModbusTcpDevice]) -> dict[str, list[Sample]]:
    return {d.id: await driver.read(d) for d in devices}


def fill_plc(sim: ModbusSimulator) -> None:
    sim.set_registers(1, HR, 0, list(range(100, 110)))
    sim.set_registers(1, HR, 20, list(range(200, 211)))
    sim.set_bits(1, COIL, 0, [True, False, True, False])


def check_values(samples: dict[str, list[Sample]]) -> None:
    """Every point of every device read good, each device getting exactly its own points."""
    for device_id, points in PLC_DEVICES.items():
        got = samples[device_id]
        assert [s.point for s in got] == [name for name, *_ in points]
        assert all(s.quality is Quality.GOOD for s in got), got
        assert got[0].value == 100  # the status word every device reads
    assert {s.point: s.value for s in samples["pump-1"]}["speed"] == 108
    assert {s.point: s.value for s in samples["pump-3"]}["temperature"] == 210
    assert [s.value for s in samples["station"] if s.point == "alarm"] == [True]


@pytest.fixture
async def plain() -> AsyncIterator[ModbusSimulator]:
    sim = ModbusSimulator()
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def strict_plc() -> AsyncIterator[StrictGapSimulator]:
    sim = StrictGapSimulator(PLC_BLOCKS)
    await sim.start()
    yield sim
    await sim.stop()


# --- one plan per link and unit -------------------------------------------------------------------------

async def test_four_devices_on_one_unit_share_their_requests(plain: ModbusSimulator) -> None:
    fill_plc(plain)
    devices = plc_devices(plain)
    driver = ModbusTcpDriver(devices)
    await driver.open()
    try:
        # One plan over the union: the coils 0-3 and holding registers 0-30 (gaps within max_gap 16).
        assert requests_of(driver, devices) == {"coil 0-3", "holding_register 0-30"}
        assert driver.describe(devices[1]) == [
            "coil 0-3 (4 bits, 1 point; shared with pump-2, pump-3, station)",
            "holding_register 0-30 (31 registers, 3 points; shared with pump-2, pump-3, station)"]
        for _ in range(3):
            before = plain.requests[1]
            check_values(await poll_round(driver, devices))
            assert plain.requests[1] - before == 2  # per device planned alone it would be 8
        assert driver.counters(devices[0])["requests"] == 6
        assert sum(driver.counters(d)["shared_reads"] for d in devices) == 3 * 3 * 2
    finally:
        await driver.close()


async def test_a_value_changed_between_rounds_reaches_every_device(plain: ModbusSimulator) -> None:
    fill_plc(plain)
    devices = plc_devices(plain)
    driver = ModbusTcpDriver(devices)
    await driver.open()
    await poll_round(driver, devices)
    plain.set_registers(1, HR, 0, [7])
    after = await poll_round(driver, devices)
    assert {d: samples[0].value for d, samples in after.items()} == dict.fromkeys(PLC_DEVICES, 7)
    await driver.close()


# --- learning from exception 02 -------------------------------------------------------------------------

async def test_a_strict_gap_plc_is_learnt_down_to_one_request_per_readable_block(
        strict_plc: StrictGapSimulator, tmp_path: Path) -> None:
    fill_plc(strict_plc)
    devices = plc_devices(strict_plc)
    driver = ModbusTcpDriver(devices, LinkContext(state_dir=tmp_path))
    await driver.open()
    per_round = []
    for _ in range(4):
        before = strict_plc.requests[1]
        check_values(await poll_round(driver, devices))  # every value good from the first poll on
        per_round.append(strict_plc.requests[1] - before)
    await driver.close()
    assert requests_of(driver, devices) == {"coil 0-3", "holding_register 0-9", "holding_register 20-30"}
    assert per_round[-2:] == [3, 3], per_round  # the fewest requests that succeed, and it stays there
    assert per_round[0] > 3
    assert "learned: holding_register 10-19 holds an address the unit refuses; no request spans it" in (
        driver.describe(devices[0]))

    # A restart (a new driver, the same state directory) starts with the learnt plan: nothing is refused.
    again = ModbusTcpDriver(plc_devices(strict_plc), LinkContext(state_dir=tmp_path))
    await again.open()
    before = strict_plc.requests[1]
    check_values(await poll_round(again, again.devices))
    assert strict_plc.requests[1] - before == 3
    assert sum(again.counters(d)["exception_replies"] for d in again.devices) == 0
    await again.close()


async def test_what_was_learnt_is_dropped_when_the_configuration_changes(
        strict_plc: StrictGapSimulator, tmp_path: Path) -> None:
    fill_plc(strict_plc)
    devices = plc_devices(strict_plc)
    driver = ModbusTcpDriver(devices, LinkContext(state_dir=tmp_path))
    await driver.open()
    for _ in range(3):
        await poll_round(driver, devices)
    await driver.close()
    (saved,) = (tmp_path / "modbus").iterdir()
    assert json.loads(saved.read_text())["tables"]["holding_register"]["refused"] == [[10, 19]]

    changed = [*devices[:3], device(strict_plc, "pump-3", [*PLC_DEVICES["pump-3"], ("extra", HR, 29, "uint16")])]
    again = ModbusTcpDriver(changed, LinkContext(state_dir=tmp_path))
    await again.open()
    await poll_round(again, changed)
    assert sum(again.counters(d)["exception_replies"] for d in changed) > 0  # learnt afresh
    await again.close()


# --- learning a size limit from exception 03 --------------------------------------------------------------

async def test_an_80_register_limit_is_learnt_exactly_and_kept_across_a_restart(tmp_path: Path) -> None:
    sim = ModbusSimulator(max_registers=80)
    await sim.start()
    sim.set_registers(1, HR, 0, list(range(125)))
    meter = device(sim, "meter", [(f"r{i}", HR, i, "uint16") for i in range(125)])
    try:
        driver = ModbusTcpDriver([meter], LinkContext(state_dir=tmp_path))
        await driver.open()
        for _ in range(12):
            samples = await driver.read(meter)
            assert [s.value for s in samples] == list(range(125))  # every poll reads everything
        await driver.close()
        assert driver.describe(meter) == [
            "holding_register 0-79 (80 registers, 80 points)", "holding_register 80-124 (45 registers, 45 points)",
            "learned: holding_register at most 80 registers per request (81 refused with 03/04); planned with 80"]

        again = ModbusTcpDriver([meter], LinkContext(state_dir=tmp_path))
        await again.open()
        before = sim.requests[1]
        assert [s.value for s in await again.read(meter)] == list(range(125))
        assert sim.requests[1] - before == 2
        assert again.counters(meter)["exception_replies"] == 0
        await again.close()
    finally:
        await sim.stop()


# --- degraded ---------------------------------------------------------------------------------------------

async def test_a_device_whose_every_request_is_refused_is_degraded_then_online_again(plain: ModbusSimulator) -> None:
    plain.refuse(HR, 0, 10, code=4)
    meter = device(plain, "meter", [("a", HR, 0, "uint16"), ("b", HR, 5, "uint16")], poll_interval=0.01)
    changes: list[tuple[DeviceState, str | None]] = []
    seen: dict[DeviceState, asyncio.Event] = {state: asyncio.Event() for state in DeviceState}

    def on_status(status: DeviceStatus[Any]) -> None:
        changes.append((status.state, status.reason))
        seen[status.state].set()

    def ignore(device: DeviceBase, *rest: Any) -> None:
        pass

    runner = LinkRunner("plc", ModbusTcpDriver([meter]), ignore, ignore, on_status)
    task = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(10):
            await seen[DeviceState.DEGRADED].wait()
            assert runner.statuses[0].as_dict()["state"] == "degraded"
            plain.refusals.clear()
            await seen[DeviceState.ONLINE].wait()
    finally:
        task.cancel()
        await asyncio.wait([task])
    assert changes == [(DeviceState.DEGRADED, "device-exception:04"), (DeviceState.ONLINE, None)]


# --- the rules of what is learnt ------------------------------------------------------------------------

def test_a_refused_span_is_trimmed_to_what_is_not_known_readable() -> None:
    known = TableKnowledge()
    known.answered(0, 9)
    known.answered(20, 30)
    assert known.refused_address(0, 30)
    assert known.refused == [(10, 19)]
    assert known.certainly_refused(5, 25) and not known.certainly_refused(0, 15)
    assert not known.refused_address(8, 22)  # implied by what is known already


def test_a_refused_span_found_readable_later_is_forgotten() -> None:
    known = TableKnowledge()
    known.refused_address(5, 5)
    known.answered(0, 9)
    assert known.refused == [] and not known.certainly_refused(0, 9)


def test_the_size_limit_halves_then_searches_up_to_the_largest_that_works() -> None:
    known = TableKnowledge()
    assert known.limit(125, 1) == 125
    assert known.refused_size(100)
    assert known.limit(125, 1) == 50  # halved
    known.answered(0, 49)
    assert known.limit(125, 1) == 75  # then halfway to the smallest refused
    assert not known.refused_size(40)  # smaller than what was answered: not a size problem
    known.answered(0, 79)
    assert known.refused_size(81)
    assert known.limit(125, 1) == 80 and known.size_settled
    assert known.limit(125, 90) == 90  # never below the largest point
