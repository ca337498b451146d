"""The retained self-description, end to end: it describes the limits that apply to each point.

Real parts only: the Modbus simulator, the whole gateway and mosquitto.
"""

from __future__ import annotations

import json
from pathlib import Path

from drivers.modbus.tables import Table
from simulators.modbus import ModbusSimulator
from tests.brokers import Broker
from tests.conftest import SubscriberFactory
from tests.e2e import DATA_TOPIC, modbus_device, readings, running, station_points, write_config

META_TOPIC = "city/water-supply/ps01/ps01-station/meta"


async def test_the_meta_gives_a_points_own_range_in_the_canonical_unit_and_the_catalogues(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory) -> None:
    inlet_limited = {**station_points()[0], "range": [0, 10]}  # bar; the catalogue's is [0, 2500] kPa
    plc = ModbusSimulator([1])
    await plc.start()
    try:
        plc.set_registers(1, Table.HOLDING_REGISTER, 0, [4400])  # 44 bar: inside the catalogue's range, not its own
        config = write_config(tmp_path, broker.port, [modbus_device("plc-1", plc.port, points=[inlet_limited])])
        subscriber = await mqtt_subscriber(broker, META_TOPIC, DATA_TOPIC)
        async with running(config):
            await subscriber.wait_count(1, DATA_TOPIC)
    finally:
        await plc.stop()
    (described,) = json.loads(subscriber.on(META_TOPIC)[0].payload)["indicators"]
    assert (described["unit"], described["range"], described["catalogue_range"]) == ("kPa", [0, 1000], [0, 2500])
    reading = readings(subscriber.messages)[0]
    assert (reading["quality"], reading["reason"]) == ("bad", "out-of-range")
