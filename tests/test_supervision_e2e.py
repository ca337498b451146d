"""Device supervision end to end: stale-data for a polled Modbus device and for an OPC-UA subscription.

Real parts only: the Modbus simulator or an asyncua station, the whole gateway (`tests/e2e.py`'s `running`)
and mosquitto. Stale means no good value from the device for `stale_after`: a device that answers with
out-of-range values only, one that does not answer at all, and a subscription that stays connected while its
server's data is frozen (the last only when configured: a pushing device is rightly silent while its values hold).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from drivers.modbus.tables import Table
from simulators.modbus import ModbusSimulator
from simulators.opcua import STATION_NAMESPACE, StationSimulator
from tests.brokers import Broker, Received, free_port
from tests.conftest import SubscriberFactory
from tests.e2e import modbus_device, running, station_points, write_config

ROOT = Path(__file__).resolve().parent.parent
ALARM_TOPIC = "city/water-supply/ps01/ps01-station/alarm"


def alarm_events(messages: list[Received], topic: str = ALARM_TOPIC) -> list[dict[str, Any]]:
    return [event for m in messages if m.topic == topic for event in json.loads(m.payload)["events"]]


def happened(messages: list[Received], alarm: str, event: str, topic: str = ALARM_TOPIC) -> bool:
    return any((e["alarm"], e["event"]) == (alarm, event) for e in alarm_events(messages, topic))


async def test_a_polled_device_goes_stale_when_it_gives_no_good_value_whether_it_answers_or_not(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory, plc: ModbusSimulator) -> None:
    pressure_only = [p for p in station_points() if p["name"] == "outlet_pressure"]
    device = modbus_device("plc-1", plc.port, points=pressure_only,
                           supervision={"stale_after": 1.0, "communication_loss": 0.6})
    config = write_config(tmp_path, broker.port, [device])
    control_room = await mqtt_subscriber(broker, ALARM_TOPIC)
    async with running(config):
        plc.set_registers(1, Table.HOLDING_REGISTER, 0, [65536 - 50])  # -0.5 bar: out of range, every poll
        await control_room.wait_for(lambda m: happened(m, "plc-1-stale-data", "raised"), "stale-data")
        assert not happened(control_room.messages, "plc-1-communication-loss", "raised"), "it answers"
        plc.set_registers(1, Table.HOLDING_REGISTER, 0, [412])
        await control_room.wait_for(lambda m: happened(m, "plc-1-stale-data", "cleared"), "a good value to clear it")

        await plc.stop()  # the case: no answer at all must not keep the device fresh
        await control_room.wait_for(lambda m: sum(e["event"] == "raised" for e in alarm_events(m)) == 3,
                                    "communication-loss and stale-data again")
    events = [(e["alarm"], e["event"]) for e in alarm_events(control_room.messages)]
    assert events[:2] == [("plc-1-stale-data", "raised"), ("plc-1-stale-data", "cleared")]
    assert sorted(events[2:]) == [("plc-1-communication-loss", "raised"), ("plc-1-stale-data", "raised")]
    stale = next(e for e in alarm_events(control_room.messages) if e["alarm"] == "plc-1-stale-data")
    assert stale["level"] == "stale-data" and stale["message"].startswith("no good value for")


async def test_a_subscription_whose_server_data_freezes_goes_stale_when_configured(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory) -> None:
    topic = "city/gas/north/prs-1/alarm"
    station = StationSimulator(free_port(), period=0)  # values change only when the test sets them: frozen
    await station.start()
    try:
        write_opcua_config(tmp_path, broker.port, station.port, supervision={"stale_after": 1.5})
        control_room = await mqtt_subscriber(broker, topic)
        async with running(tmp_path / "gateway.yaml"):
            await control_room.wait_for(lambda m: happened(m, "prs-1-plc-stale-data", "raised", topic),
                                        "stale-data while the session stays up")
            await station.set_value("Station.InletPressure", 351.5)
            await control_room.wait_for(lambda m: happened(m, "prs-1-plc-stale-data", "cleared", topic),
                                        "the next notification to clear it")
    finally:
        await station.stop()
    levels = [e["level"] for e in alarm_events(control_room.messages, topic)]
    assert levels == ["stale-data", "stale-data"], "the link never failed"


def write_opcua_config(directory: Path, broker_port: int, server_port: int, **settings: Any) -> None:
    inlet = {"name": "inlet", "indicator": "inlet-pressure", "node": f"nsu={STATION_NAMESPACE};s=Station.InletPressure"}
    device = {
        "id": "prs-1-plc", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{server_port}/station",
        "asset": {"domain": "gas", "site": "north", "id": "prs-1", "type": "gas-regulating-station"},
        "publishing_interval": 0.1, "keepalive": 0.5, "timeout": 2.0, "poll_interval": 1.0,
        "points": [inlet],
        **settings}
    (directory / "devices.yaml").write_text(yaml.safe_dump({"devices": [device]}))
    (directory / "gateway.yaml").write_text(yaml.safe_dump({
        "gateway": {"id": "test-gw", "state_dir": str(directory / "state")},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "reconnect": {"initial_delay": 0.1, "max_delay": 0.5}},
        "buffer": {"synchronous": "normal"},
        "catalogue": str(ROOT / "config" / "catalogue.yaml"), "include": ["devices.yaml"]}))
