"""End to end: a Modbus device drives methane through both alarm levels and back while the broker is down.

Real parts only: the pymodbus simulator, our Modbus driver, mapping, processing,
the SQLite buffer, the MQTT publisher and a mosquitto broker. After the broker
comes back, the control room must see the alarm events first, in the order they
happened, and only then the backlog of ordinary readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.tables import Table
from drivers.registry import make_driver
from gateway.buffer import Buffer
from gateway.config.loader import load_catalogue
from gateway.mapping import DeviceMapper
from gateway.model.driver import Driver
from gateway.model.readings import now_ms
from gateway.model.resolved import assets_of, resolve_device
from gateway.model.settings import MqttSettings
from gateway.pipeline import Pipeline
from gateway.processing import Processor, Supervision
from gateway.publisher import Publisher
from gateway.topics import Topics
from simulators.modbus import ModbusSimulator
from tests.brokers import Broker, eventually
from tests.conftest import BrokerFactory, SubscriberFactory

CATALOGUE = Path(__file__).parent.parent / "config" / "catalogue.yaml"
PREFIX = "city/gas/station-7/regulator-1"


@pytest.fixture
async def simulator() -> AsyncIterator[ModbusSimulator]:
    server = ModbusSimulator([1])
    await server.start()
    yield server
    await server.stop()


def regulator(port: int) -> ModbusTcpDevice:
    no_delay = {"reporting": None}  # publish every methane reading; alarms from the catalogue (delay_on 3 s) ...
    alarms = [  # ... but without the delays, so the test needs no waiting
        {"id": "methane-level-1", "level": "high", "limit": 20, "hysteresis": 2},
        {"id": "methane-level-2", "level": "high-high", "limit": 40, "hysteresis": 2, "severity": "critical"}]
    return ModbusTcpDevice.model_validate({
        "id": "rtu-1", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": port, "poll_interval": 1,
        "asset": {"domain": "gas", "site": "station-7", "id": "regulator-1", "type": "gas-regulating-station"},
        "points": [
            {"name": "methane", "indicator": "methane-lel", "table": "holding_register", "address": 0,
             "scale": 0.1, "processing": {**no_delay, "alarms": alarms}},
            {"name": "p_out", "indicator": "outlet-pressure", "table": "holding_register", "address": 1,
             "scale": 0.01, "processing": {"reporting": None}},
        ]})


async def poll(driver: Driver, device: ModbusTcpDevice, pipeline: Pipeline) -> None:
    pipeline.submit(device.id, await driver.read(device), now_ms())


async def test_alarm_events_raised_during_an_outage_arrive_first_and_in_order(
        tmp_path: Path, broker_factory: BrokerFactory, mqtt_subscriber: SubscriberFactory,
        simulator: ModbusSimulator) -> None:
    broker: Broker = broker_factory(persistence=True)
    control_room = await mqtt_subscriber(broker, f"{PREFIX}/#", clean_session=False, client_id="control-room")
    catalogue = load_catalogue(CATALOGUE)
    device = regulator(simulator.port)
    topics = Topics("city", "gw-1")
    buffer = await Buffer.open(tmp_path / "buffer.sqlite", 50_000_000)
    settings = MqttSettings.model_validate({"host": "127.0.0.1", "port": broker.port,
                                            "reconnect": {"initial_delay": 0.1, "max_delay": 0.3}})
    publisher = Publisher(settings, "gw-1", buffer, topics.gateway_status())
    resolved = resolve_device(device, catalogue)
    processor = Processor(assets_of([resolved], catalogue), supervision={device.id: Supervision(None, None)})
    pipeline = Pipeline("gw-1", topics, {device.id: DeviceMapper(resolved)}, buffer, processor,
                        on_active_alarms=publisher.set_retained)
    driver = make_driver([device])
    tasks = [asyncio.create_task(publisher.run()), asyncio.create_task(pipeline.run())]
    try:
        await driver.open()
        await publisher.wait_connected()
        simulator.set_registers(1, Table.HOLDING_REGISTER, 0, [50, 250])  # 5 %LEL, 2.5 kPa
        await poll(driver, device, pipeline)
        await control_room.wait_count(1, f"{PREFIX}/data")

        broker.stop()
        await eventually(lambda: not publisher.connected, "the publisher to notice the broker is gone")
        # 5 -> 25 (level 1) -> 45 (level 2) -> 30 (level 2 clears) -> 10 (level 1 clears), readings in between.
        for methane in [100, 250, 260, 450, 460, 300, 290, 100, 60]:
            simulator.set_registers(1, Table.HOLDING_REGISTER, 0, [methane, 250])
            await poll(driver, device, pipeline)
        await pipeline.drained()
        assert (await buffer.stats()).messages == 13  # 9 data + 4 alarm messages waiting

        broker.start()
        await control_room.wait_for(
            lambda messages: sum(m.topic == f"{PREFIX}/data" for m in messages) >= 10, "the backlog")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await driver.close()
        await buffer.close()

    backlog = [m for m in control_room.messages if json.loads(m.payload).get("historical") is True]
    kinds = [m.topic.rsplit("/", 1)[1] for m in backlog]
    assert kinds == ["alarm"] * 4 + ["data"] * 9, kinds
    events = [e for m in backlog[:4] for e in json.loads(m.payload)["events"]]
    assert [(e["alarm"], e["event"]) for e in events] == [
        ("methane-level-1", "raised"), ("methane-level-2", "raised"),
        ("methane-level-2", "cleared"), ("methane-level-1", "cleared")]
    assert [e["value"] for e in events] == pytest.approx([25.0, 45.0, 30.0, 10.0])
    assert events[1]["severity"] == "critical" and events[0]["limit"] == 20
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert all(m.qos == 1 for m in backlog)
    state = [m for m in control_room.messages if m.topic == f"{PREFIX}/active-alarms"]
    assert state and json.loads(state[-1].payload)["active"] == []
