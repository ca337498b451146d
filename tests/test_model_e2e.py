"""The metadata model end to end: booleans and named states, as a subscriber receives them.

Real parts only: the Modbus simulator, the whole gateway and mosquitto.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.modbus.tables import Table
from simulators.modbus import ModbusSimulator
from tests.brokers import Broker, Received
from tests.conftest import SubscriberFactory
from tests.e2e import DATA_TOPIC, modbus_device, readings, running, write_config

META_TOPIC = "city/water-supply/ps01/ps01-station/meta"
ALARM_TOPIC = "city/water-supply/ps01/ps01-station/alarm"


async def test_an_inverted_bit_and_a_named_mode_reach_the_subscriber(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory) -> None:
    points = [
        # The PLC reports "pump stopped" on discrete input 3: inverted, it feeds pump-running.
        {"name": "pump_stopped", "indicator": "pump-running", "table": "discrete_input", "address": 3, "invert": True},
        # The PLC's own mode codes (7 automatic, 5 manual) map onto the catalogue's states.
        {"name": "mode", "indicator": "pump-mode", "table": "holding_register", "address": 20,
         "states": {7: "automatic", 5: "manual"}},
    ]
    plc = ModbusSimulator([1])
    await plc.start()
    try:
        plc.set_bits(1, Table.DISCRETE_INPUT, 3, [True])
        plc.set_registers(1, Table.HOLDING_REGISTER, 20, [7])
        config = write_config(tmp_path, broker.port, [modbus_device("plc-1", plc.port, points=points)])
        subscriber = await mqtt_subscriber(broker, META_TOPIC, DATA_TOPIC)
        async with running(config):
            await subscriber.wait_count(1, DATA_TOPIC)
    finally:
        await plc.stop()
    by_point = {r["point"]: r for r in readings(subscriber.messages)}
    assert by_point["pump_stopped"]["value"] is False, "the pump is stopped, so pump-running is false"
    mode = by_point["mode"]
    assert (mode["value"], mode["state"], mode["quality"]) == (2, "automatic", "good")
    described = {d["point"]: d for d in json.loads(subscriber.on(META_TOPIC)[0].payload)["indicators"]}
    assert [s["id"] for s in described["mode"]["states"]] == ["stopped", "manual", "automatic"]
    assert described["mode"]["states"][2]["name"] == {"en": "Automatic", "zh": "自动"}


async def test_the_meta_says_which_catalogue_each_indicator_came_from(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory) -> None:
    (tmp_path / "city-water.yaml").write_text(
        "name: city-water\nversion: '4'\nindicators:\n"
        "  - {id: chlorine-dose-rate, name: {en: Chlorine dose rate, zh: 投氯量}, kind: measurement, unit: L/h,\n"
        "     range: [0, 200], quantified: instantaneous}\n")
    points = [{"name": "dose", "indicator": "chlorine-dose-rate", "table": "holding_register", "address": 0},
              {"name": "q", "indicator": "flow", "table": "holding_register", "address": 1}]
    plc = ModbusSimulator([1])
    await plc.start()
    try:
        plc.set_registers(1, Table.HOLDING_REGISTER, 0, [12, 40])
        config = write_config(tmp_path, broker.port, [modbus_device("plc-1", plc.port, points=points)])
        main = yaml.safe_load(config.read_text())
        main["catalogue"] = [main["catalogue"], "city-water.yaml"]
        config.write_text(yaml.safe_dump(main))
        subscriber = await mqtt_subscriber(broker, META_TOPIC, DATA_TOPIC)
        async with running(config):
            await subscriber.wait_count(1, DATA_TOPIC)
    finally:
        await plc.stop()
    meta = json.loads(subscriber.on(META_TOPIC)[0].payload)
    assert meta["catalogue"] == [{"name": "catalogue", "version": "1"}, {"name": "city-water", "version": "4"}]
    assert {d["id"]: d["catalogue"] for d in meta["indicators"]} == {"chlorine-dose-rate": "city-water",
                                                                     "flow": "catalogue"}
    assert {r["indicator"]: r["value"] for r in readings(subscriber.messages)} == {"chlorine-dose-rate": 12,
                                                                                   "flow": 40}


async def test_two_instances_of_one_indicator_reach_the_subscriber_apart(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory) -> None:
    levels = Path(__file__).parent / "config_cases" / "common" / "levels-overlay.yaml"
    points = [
        {"name": "reservoir", "indicator": "level", "instance": "reservoir", "table": "holding_register",
         "address": 0, "scale": 0.01},
        {"name": "wet_well", "indicator": "level", "instance": "wet-well", "table": "holding_register",
         "address": 1, "scale": 0.01},
    ]
    derived = [{"indicator": "level-difference", "expression": "level[reservoir] - level[wet-well]"}]
    plc = ModbusSimulator([1])
    await plc.start()
    try:
        plc.set_registers(1, Table.HOLDING_REGISTER, 0, [320, 610])  # the wet well is above its 5 m alarm
        config = write_config(tmp_path, broker.port,
                              [modbus_device("plc-1", plc.port, points=points, derived=derived)])
        main = yaml.safe_load(config.read_text())
        main["catalogue"] = [main["catalogue"], str(levels)]
        config.write_text(yaml.safe_dump(main))
        subscriber = await mqtt_subscriber(broker, META_TOPIC, DATA_TOPIC, ALARM_TOPIC)
        async with running(config):
            await subscriber.wait_count(1, ALARM_TOPIC)
            await subscriber.wait_for(lambda _: any(r["indicator"] == "level-difference"
                                                    for r in readings(subscriber.messages)), "a derived reading")
    finally:
        await plc.stop()
    got = readings(subscriber.messages)
    assert [(r["indicator"], r.get("instance"), r["value"]) for r in got[:3]] == [
        ("level", "reservoir", pytest.approx(3.2)), ("level", "wet-well", pytest.approx(6.1)),
        ("level-difference", None, pytest.approx(-2.9))]
    (event,) = json.loads(subscriber.on(ALARM_TOPIC)[0].payload)["events"]
    assert (event["alarm"], event["indicator"], event["instance"], event["event"]) == (
        "level[wet-well]-high", "level", "wet-well", "raised")
    meta = json.loads(subscriber.on(META_TOPIC)[0].payload)
    described = {(d["id"], d.get("instance")): d for d in meta["indicators"]}
    assert set(described) == {("level", "reservoir"), ("level", "wet-well"), ("level-difference", None)}
    assert described[("level", "wet-well")]["alarms"][0]["id"] == "level[wet-well]-high"


def text_registers(text: str, registers: int) -> list[int]:
    raw = text.encode().ljust(registers * 2, b"\x00")
    return list(struct.unpack(f">{registers}H", raw))


async def test_attributes_go_into_the_meta_and_never_into_readings(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory) -> None:
    points = [{"name": "flow", "indicator": "flow", "table": "holding_register", "address": 0}]
    attributes = [
        {"name": "station_no", "attribute": "station-number", "table": "holding_register", "address": 100},
        {"name": "station_name", "attribute": "station-id", "table": "holding_register", "address": 110,
         "type": "string", "length": 4},
    ]
    plc = ModbusSimulator([1])
    await plc.start()
    try:
        plc.set_registers(1, Table.HOLDING_REGISTER, 0, [40])
        plc.set_registers(1, Table.HOLDING_REGISTER, 100, [17])
        plc.set_registers(1, Table.HOLDING_REGISTER, 110, text_registers("北站-1", 4))  # UTF-8 text, 8 bytes
        device = modbus_device("plc-1", plc.port, points=points, attributes=attributes, attribute_interval=0.3)
        config = write_config(tmp_path, broker.port, [device])
        subscriber = await mqtt_subscriber(broker, META_TOPIC, DATA_TOPIC, "city/gateway/test-gw/device/+/status")

        def described_attributes(messages: list[Received]) -> list[dict[str, Any]]:
            metas = [m for m in messages if m.topic == META_TOPIC]
            return json.loads(metas[-1].payload)["attributes"] if metas else []

        async with running(config):
            await subscriber.wait_for(lambda m: len(described_attributes(m)) == 2, "the attributes in the meta")
            first = described_attributes(subscriber.messages)
            plc.set_registers(1, Table.HOLDING_REGISTER, 110, text_registers("南站-2", 4))
            await subscriber.wait_for(lambda m: any(a["value"] == "南站-2" for a in described_attributes(m)),
                                      "the changed station id, read again")
            await subscriber.wait_count(1, DATA_TOPIC)
    finally:
        await plc.stop()
    assert [(a["id"], a["value"], a["point"], a["device"]) for a in first] == [
        ("station-number", 17, "station_no", "plc-1"), ("station-id", "北站-1", "station_name", "plc-1")]
    assert first[0]["name"] == {"en": "Station number", "zh": "站号"}
    assert {r["point"] for r in readings(subscriber.messages)} == {"flow"}, "attributes are never readings"
    statuses = {m.topic for m in subscriber.messages if m.topic.endswith("/status")}
    assert statuses == {"city/gateway/test-gw/device/plc-1/status"}, "the attribute reader is no device of its own"
