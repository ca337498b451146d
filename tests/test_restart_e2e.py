"""Alarm state across a real restart: the whole gateway run twice on one state directory.

Real parts only: the Modbus simulator, the gateway (`tests/e2e.py`'s `running`) and mosquitto. The control room
stays subscribed across the restart and must see each alarm raised once, a clear for the one that ended
while the gateway was down, and a retained `active-alarms` that is right from the gateway's first message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from drivers.modbus.tables import Table
from simulators.modbus import ModbusSimulator
from tests.brokers import Broker, Received
from tests.conftest import SubscriberFactory
from tests.e2e import DATA_TOPIC, modbus_device, running, station_points, write_config

STATION = "city/water-supply/ps01/ps01-station"
LOW_LOW = "outlet-pressure-low-low"
STOPPED = "pump-stopped"


def station_with_alarms(port: int) -> dict[str, Any]:
    pressure, _, pump = station_points()
    pressure = {**pressure, "processing": {
        "alarms": [{"level": "low-low", "limit": 100, "hysteresis": 10, "message": "Outlet pressure lost"}]}}
    pump = {**pump, "processing": {"alarms": [{"id": STOPPED, "level": "state", "state": False}]}}
    return modbus_device("plc-1", port, points=[pressure, pump])


def events(messages: list[Received]) -> list[dict[str, Any]]:
    return [e for m in messages if m.topic == f"{STATION}/alarm" for e in json.loads(m.payload)["events"]]


def active_states(messages: list[Received]) -> list[dict[str, int]]:
    """Each active-alarms message as alarm id -> since."""
    return [{a["alarm"]: a["since"] for a in json.loads(m.payload)["active"]}
            for m in messages if m.topic == f"{STATION}/active-alarms"]


async def test_active_alarms_survive_a_restart_and_one_that_ended_meanwhile_is_cleared(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory) -> None:
    plc = ModbusSimulator([1])
    await plc.start()
    try:
        plc.set_registers(1, Table.HOLDING_REGISTER, 0, [50])  # 0.5 bar = 50 kPa: low-low
        plc.set_bits(1, Table.COIL, 0, [False])  # the pump has stopped
        config = write_config(tmp_path, broker.port, [station_with_alarms(plc.port)])
        control_room = await mqtt_subscriber(broker, f"{STATION}/#")
        async with running(config):
            await control_room.wait_for(lambda m: len(events(m)) == 2, "both alarms raised")
        raised = {e["alarm"]: e for e in events(control_room.messages)}
        assert {a: e["event"] for a, e in raised.items()} == {LOW_LOW: "raised", STOPPED: "raised"}
        assert (raised[LOW_LOW]["severity"], raised[STOPPED]["level"]) == ("critical", "state")

        plc.set_registers(1, Table.HOLDING_REGISTER, 0, [412])  # pressure restored while the gateway is down
        first_run = len(control_room.messages)
        async with running(config):
            await control_room.wait_for(lambda m: len(events(m)) == 3, "the clear of the low-low alarm")
            data_seen = len([m for m in control_room.messages if m.topic == DATA_TOPIC])
            await control_room.wait_count(data_seen + 5, DATA_TOPIC)  # five more polls with the pump stopped
    finally:
        await plc.stop()
    second_run = control_room.messages[first_run:]
    assert [(e["alarm"], e["event"]) for e in events(second_run)] == [(LOW_LOW, "cleared")], "nothing raised again"
    states = active_states(second_run)
    since = {alarm: event["ts"] for alarm, event in raised.items()}
    # From its first message the restarted gateway shows the pump alarm raised in the first run, since then;
    # the low-low alarm, if shown before the first poll cleared it, with its first since too.
    assert states[0][STOPPED] == since[STOPPED] and states[0].get(LOW_LOW, since[LOW_LOW]) == since[LOW_LOW]
    assert states[-1] == {STOPPED: since[STOPPED]}
