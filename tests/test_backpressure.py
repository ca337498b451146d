"""Back-pressure instead of loss: when the gateway makes readings faster than a connected broker takes them, the
polls wait for acknowledgements (the devices are reported overrun), the backlog stays bounded, and nothing is
dropped. Real parts: the Modbus simulator, the whole gateway, mosquitto (paused with SIGSTOP: connected, but
acknowledging nothing, the extreme of a broker or a gateway that cannot keep up)."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.app import BACKLOG_WINDOWS
from simulators.modbus import ModbusSimulator
from tests.brokers import Broker, eventually
from tests.conftest import SubscriberFactory
from tests.e2e import DATA_TOPIC, modbus_device, running, seqs, write_config

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
