"""Logs say each thing once: the gateway run as systemd runs it (its own process, the default log level),
against a Modbus device that answers garbage and one that is not there at all. What the libraries say on every
poll (pymodbus's hex dumps and reconnect lines, asyncio's tracebacks for a transport whose protocol choked) stays
at debug; the gateway says once that a device fails, with the reason."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.modbus import ModbusSimulator
from tests.brokers import Broker, eventually, free_port
from tests.conftest import SubscriberFactory
from tests.e2e import ASSET, modbus_device, running, write_config

GARBAGE = {
    "wrong-transaction": lambda reply: b"\x7f\x7f" + reply[2:],
    "noise": lambda reply: b"\x13\x37" * 20,
}


def run_as_systemd_does(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gateway", "run", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
async def test_a_device_answering_garbage_and_a_dead_one_are_each_told_once(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator, garbage: object) -> None:
    plc.reply_mangler = garbage  # type: ignore[assignment]
    pressure = [{"name": "p", "indicator": "outlet-pressure", "table": "holding_register", "address": 0}]
    devices = [modbus_device("plc-1", plc.port, points=pressure, poll_interval=0.1, timeout=0.2),
               modbus_device("plc-2", free_port(), points=pressure, poll_interval=0.1, timeout=0.2,
                             asset={**ASSET, "id": "ps01-reservoir"})]
    config = write_config(tmp_path, broker.port, devices)
    process = run_as_systemd_does(config)
    try:
        await eventually(lambda: plc.requests[1] >= 4, "polls answered with garbage, retried after each failure")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    lines = stderr.splitlines()
    assert "Traceback" not in stderr
    assert not [line for line in lines if line.startswith(("ERROR pymodbus", "WARNING pymodbus", "ERROR asyncio"))]
    for device in ("plc-1", "plc-2"):
        told = [line for line in lines if f"device {device}" in line and "fail" in line]
        assert len(told) == 1, (device, lines)


async def test_the_retained_status_at_recovery_says_the_failures_are_over(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory, plc: ModbusSimulator) -> None:
    topic = "city/gateway/test-gw/device/plc-1/status"
    pressure = [{"name": "p", "indicator": "outlet-pressure", "table": "holding_register", "address": 0}]
    config = write_config(tmp_path, broker.port, [modbus_device("plc-1", plc.port, points=pressure, timeout=0.2)])
    centre = await mqtt_subscriber(broker, topic)
    plc.reply_mangler = GARBAGE["wrong-transaction"]
    async with running(config):
        await centre.wait_for(lambda m: any(json.loads(x.payload)["state"] == "failing" for x in m), "failing")
        plc.reply_mangler = None
        await centre.wait_for(lambda m: json.loads(m[-1].payload)["state"] == "online", "online again")
    recovered = json.loads(centre.messages[-1].payload)
    assert recovered["consecutive_failures"] == 0 and recovered["failures"] >= 1
