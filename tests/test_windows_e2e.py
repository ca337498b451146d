"""Windows and counters end to end: the Modbus simulator, the whole gateway and mosquitto.

Windows of 2 s keep the tests short; they are aligned to the wall clock like any other size.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

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
