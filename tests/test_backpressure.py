"""Back-pressure instead of loss: when the gateway makes readings faster than a connected broker takes them, the
polls wait for acknowledgements (the devices are reported overrun), the backlog stays bounded, and nothing is
dropped. Real parts: the Modbus simulator, the whole gateway, mosquitto (paused with SIGSTOP: connected, but
acknowledging nothing, the extreme of a broker or a gateway that cannot keep up)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from drivers.modbus.tables import Table
from gateway.app import BACKLOG_WINDOWS
from simulators.modbus import ModbusSimulator
from tests.brokers import WAIT, Broker, eventually
from tests.conftest import SubscriberFactory
from tests.e2e import DATA_TOPIC, modbus_device, running, seqs, station_points, write_config

MAX_INFLIGHT = 4


async def test_polls_wait_for_a_broker_that_falls_behind_and_nothing_is_dropped(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory, plc: ModbusSimulator) -> None:
    config = write_config(tmp_path, broker.port, [modbus_device("plc-1", plc.port, poll_interval=0.02)],
                          max_inflight=MAX_INFLIGHT)
    centre = await mqtt_subscriber(broker, DATA_TOPIC, "city/gateway/test-gw/device/plc-1/status")
    async with running(config) as gateway:
        await centre.wait_for(lambda m: len(seqs(m)) >= 30, "readings flowing")
        status = gateway.runners[0].statuses[0]
        assert not status.overrun
        broker.pause()
        try:
            await eventually(lambda: status.overrun, "the device reported overrun")
            assert gateway.pipeline is not None
            buffer = gateway.pipeline._buffer
            # The polls wait: what waits for the broker stays near the high-water mark, it does not grow.
            assert buffer.waiting <= BACKLOG_WINDOWS * MAX_INFLIGHT + 2
            committed = gateway.pipeline.entries_committed
        finally:
            broker.resume()
        await centre.wait_for(lambda m: set(range(1, committed + 1)) <= set(seqs(m)), "everything delivered")
        await eventually(lambda: not status.overrun, "on schedule again")
        stats = await buffer.stats()
    assert stats.dropped_readings == 0
    statuses = [json.loads(m.payload) for m in centre.messages if m.topic.endswith("/status")]
    overrun = next(s for s in statuses if s["overrun"])
    assert overrun["achieved_interval"] > 0.02 * 1.5


async def test_a_write_is_not_held_back_with_the_polls(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator) -> None:
    # A lighting schedule or a command must switch on time even while readings wait for the broker.
    setpoint = {"name": "setpoint", "indicator": "pressure-margin", "table": "holding_register", "address": 5,
                "type": "int16", "writable": True, "write": {"range": [0, 1000]}}
    device = modbus_device("plc-1", plc.port, poll_interval=0.02, points=[*station_points(), setpoint])
    config = write_config(tmp_path, broker.port, [device], max_inflight=MAX_INFLIGHT)
    async with running(config) as gateway:
        await eventually(lambda: bool(gateway.runners) and gateway.runners[0].statuses[0].polls >= 5, "polling")
        runner = gateway.runners[0]
        status = runner.statuses[0]
        broker.pause()
        try:
            await eventually(lambda: status.overrun, "the polls held back")
            polls = status.polls
            read_back = await asyncio.wait_for(runner.write(status.device, "setpoint", 321), WAIT)
            assert read_back == 321 and plc.get_registers(1, Table.HOLDING_REGISTER, 5, 1) == [321]
            assert status.polls == polls, "the write went through while the polls were still held"
        finally:
            broker.resume()
