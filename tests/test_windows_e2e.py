"""Windows and counters end to end: the Modbus simulator, the whole gateway and mosquitto.

Windows of 2 s keep the tests short; they are aligned to the wall clock like any other size.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.modbus.tables import Table
from simulators.modbus import ModbusSimulator
from tests.brokers import Broker, Received
from tests.conftest import SubscriberFactory
from tests.e2e import modbus_device, running, station_points, write_config

STATS_TOPIC = "city/water-supply/ps01/ps01-station/stats"


def windows(messages: list[Received], indicator: str) -> list[dict[str, Any]]:
    return [w for m in messages if m.topic == STATS_TOPIC for w in json.loads(m.payload)["windows"]
            if w["indicator"] == indicator]


@pytest.fixture
async def plc() -> AsyncIterator[ModbusSimulator]:
    simulator = ModbusSimulator([1])
    await simulator.start()
    simulator.set_registers(1, Table.HOLDING_REGISTER, 0, [412])  # 4.12 bar
    yield simulator
    await simulator.stop()


async def test_a_window_of_a_device_that_is_offline_counts_no_samples_and_the_failed_polls(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory, plc: ModbusSimulator) -> None:
    pressure = {**station_points()[0], "processing": {"windows": [2]}}
    device = modbus_device("plc-1", plc.port, points=[pressure], backoff_max=0.2)  # retried every poll
    config = write_config(tmp_path, broker.port, [device])
    platform = await mqtt_subscriber(broker, STATS_TOPIC)
    async with running(config):
        await platform.wait_for(lambda m: any(w["good"] == 1.0 for w in windows(m, "outlet-pressure")),
                                "a window while the device answers")
        await plc.stop()
        await platform.wait_for(lambda m: any(w["good"] == 0.0 for w in windows(m, "outlet-pressure")),
                                "a window while it does not")
    answered = next(w for w in windows(platform.messages, "outlet-pressure") if w["good"] == 1.0)
    offline = next(w for w in windows(platform.messages, "outlet-pressure") if w["good"] == 0.0)
    assert answered["count"] >= 5 and answered["failed"] == 0
    assert offline["count"] == 0 and offline["failed"] >= 5, offline
    assert (offline["min"], offline["mean"], offline["last"]) == (None, None, None)


def counter_catalogue(directory: Path) -> Path:
    """Three totalisers with registers of 16, 32 and 64 bits (one source per indicator of an asset)."""
    def totaliser(bits: int) -> dict[str, Any]:
        return {"id": f"volume-{bits}", "name": {"en": f"Volume {bits}", "zh": f"累计水量 {bits}"}, "kind": "counter",
                "unit": "m3", "quantified": "cumulative", "windows": [2]}

    path = directory / "catalogue.yaml"
    path.write_text(yaml.safe_dump({
        "domains": [{"id": "water-supply", "name": {"en": "Water supply", "zh": "供水"}}],
        "asset_types": [{"id": "water-pumping-station", "domain": "water-supply",
                         "name": {"en": "Water pumping station", "zh": "供水泵站"}}],
        "indicators": [totaliser(16), totaliser(32), totaliser(64)]}, allow_unicode=True))
    return path


def totaliser_point(bits: int, address: int, **counter: Any) -> dict[str, Any]:
    return {"name": f"v{bits}", "indicator": f"volume-{bits}", "table": "holding_register", "address": address,
            "type": f"uint{bits}", "processing": {"counter": {"rollover_bits": bits, **counter}}}


def words(value: int, count: int) -> list[int]:
    """A register value as big-endian 16-bit words."""
    return [(value >> (16 * (count - 1 - i))) & 0xFFFF for i in range(count)]


async def test_totalisers_roll_over_at_32_and_64_bits_and_a_16_bit_reset_from_above_half_is_a_reset(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory, plc: ModbusSimulator) -> None:
    points = [totaliser_point(16, 20, max_per_hour=36_000),  # at most 10 m3/s: 25,541 m3 in one poll is not a wrap
              totaliser_point(32, 30), totaliser_point(64, 40)]
    config = write_config(tmp_path, broker.port, [modbus_device("plc-1", plc.port, points=points)])
    main = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**main, "catalogue": str(counter_catalogue(tmp_path))}))

    def set_totalisers(v16: int, v32: int, v64: int) -> None:
        plc.set_registers(1, Table.HOLDING_REGISTER, 20, [v16])
        plc.set_registers(1, Table.HOLDING_REGISTER, 30, words(v32, 2))
        plc.set_registers(1, Table.HOLDING_REGISTER, 40, words(v64, 4))

    def seen(messages: list[Received], bits: int, key: str) -> bool:
        return any(w.get(key) for w in windows(messages, f"volume-{bits}"))

    set_totalisers(40_000, 2 ** 32 - 3, 2 ** 64 - 3)
    platform = await mqtt_subscriber(broker, STATS_TOPIC)
    async with running(config):
        await platform.wait_for(lambda m: all(seen(m, bits, "first") for bits in (16, 32, 64)), "first windows")
        set_totalisers(5, 4, 4)
        await platform.wait_for(lambda m: seen(m, 16, "resets") and seen(m, 32, "rollovers")
                                and seen(m, 64, "rollovers"), "the roll-overs and the reset")

    def total(bits: int) -> int:
        return sum(w["consumption"] or 0 for w in windows(platform.messages, f"volume-{bits}"))

    assert (total(32), total(64), total(16)) == (7, 7, 0)
    (reset,) = [r for w in windows(platform.messages, "volume-16") for r in w.get("resets", [])]
    assert (reset["before"], reset["after"]) == (40_000, 5)
    last_64 = windows(platform.messages, "volume-64")[-1]
    assert last_64["last"] == 4 and windows(platform.messages, "volume-64")[0]["first"] == 2 ** 64 - 3  # exact
