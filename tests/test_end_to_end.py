"""The whole data path with real parts: pymodbus simulators → gateway → SQLite buffer → mosquitto → subscriber."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivers.modbus.tables import Table
from gateway.buffer import read_stats
from gateway.config.loader import load_config
from simulators.modbus import ModbusSimulator
from tests.brokers import WAIT, Broker, Received, eventually
from tests.conftest import BrokerFactory, SubscriberFactory
from tests.e2e import (
    DATA_TOPIC,
    modbus_device,
    readings,
    running,
    seqs,
    streams_in_order,
    write_config,
)


@pytest.fixture
async def station() -> ModbusSimulator:
    simulator = ModbusSimulator([1])
    await simulator.start()
    simulator.set_registers(1, Table.HOLDING_REGISTER, 0, [412])  # 4.12 bar
    simulator.set_registers(1, Table.INPUT_REGISTER, 10, [0x4148, 0x0000])  # 12.5 L/s as float32
    simulator.set_bits(1, Table.COIL, 0, [True])
    yield simulator
    await simulator.stop()


async def test_readings_arrive_on_the_model_with_units_quality_and_self_description(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory, station: ModbusSimulator) -> None:
    config = write_config(tmp_path, broker.port, [modbus_device("plc-1", station.port)])
    subscriber = await mqtt_subscriber(broker, "city/#")
    async with running(config):
        await subscriber.wait_count(2, DATA_TOPIC)
    batch = json.loads(subscriber.on(DATA_TOPIC)[0].payload)
    assert batch["asset"] == {"domain": "water-supply", "site": "ps01", "id": "ps01-station"}
    assert batch["gateway"] == "test-gw" and batch["historical"] is False
    by_indicator = {r["indicator"]: r for r in batch["readings"]}
    assert by_indicator["outlet-pressure"]["value"] == pytest.approx(412.0)
    assert (by_indicator["outlet-pressure"]["unit"], by_indicator["outlet-pressure"]["unit_code"]) == ("kPa", "KPA")
    assert by_indicator["flow"]["value"] == pytest.approx(45.0)  # 12.5 L/s = 45 m³/h
    assert by_indicator["flow"]["unit"] == "m3/h"
    assert by_indicator["pump-running"]["value"] is True
    assert all(r["quality"] == "good" and "reason" not in r for r in batch["readings"])
    numbers = seqs(subscriber.messages)
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "seq increases by one per reading"

    meta = [m for m in subscriber.messages if m.topic == "city/water-supply/ps01/ps01-station/meta"]
    assert meta and meta[0].qos == 1
    description = json.loads(meta[0].payload)
    assert {i["id"]: i["unit"] for i in description["indicators"]} == {
        "outlet-pressure": "kPa", "flow": "m3/h", "pump-running": "state"}
    device_status = [json.loads(m.payload) for m in subscriber.on("city/gateway/test-gw/device/plc-1/status")]
    assert device_status[0]["state"] == "online"
    gateway_status = [json.loads(m.payload)["state"] for m in subscriber.on("city/gateway/test-gw/status")]
    assert gateway_status[0] == "online" and gateway_status[-1] == "offline", "a clean stop announces offline"


async def test_every_reading_taken_while_the_broker_is_down_arrives_live_first_then_the_history(
        tmp_path: Path, broker_factory: BrokerFactory, mqtt_subscriber: SubscriberFactory,
        station: ModbusSimulator) -> None:
    broker = broker_factory(persistence=True)  # the subscriber's session and its queue survive the restart
    subscriber = await mqtt_subscriber(broker, DATA_TOPIC, clean_session=False, client_id="operator")
    config = write_config(tmp_path, broker.port, [modbus_device("plc-1", station.port)])
    async with running(config) as gateway:
        await subscriber.wait_count(2, DATA_TOPIC)
        broker.stop()
        assert gateway.pipeline is not None
        during = gateway.pipeline.entries_committed
        await eventually(lambda: gateway.pipeline is not None and gateway.pipeline.entries_committed >= during + 15,
                         "five polls committed while the broker is down")
        taken_while_down = gateway.pipeline.entries_committed
        broker.start()
        await subscriber.wait_for(lambda messages: len(set(seqs(messages))) >= taken_while_down,
                                  "every reading taken so far")
    numbers = seqs(subscriber.messages)
    assert set(range(1, taken_while_down + 1)) <= set(numbers), "no reading lost"
    assert streams_in_order(subscriber.messages), "live and historical readings each in the order they were taken"
    assert any(json.loads(m.payload)["historical"] for m in subscriber.on(DATA_TOPIC)), \
        "batches that waited for the broker are flagged historical"


async def test_gateway_starts_with_the_broker_down_and_delivers_once_it_is_up(
        tmp_path: Path, broker_factory: BrokerFactory, mqtt_subscriber: SubscriberFactory,
        station: ModbusSimulator) -> None:
    broker = broker_factory(start=False)
    config = write_config(tmp_path, broker.port, [modbus_device("plc-1", station.port)])
    async with running(config) as gateway:
        await eventually(lambda: gateway.pipeline is not None and gateway.pipeline.entries_committed >= 6,
                         "polls buffered without a broker")
        broker.start()
        subscriber = await mqtt_subscriber(broker, DATA_TOPIC)
        await subscriber.wait_count(1, DATA_TOPIC)
    assert readings(subscriber.messages)


def run_gateway_process(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gateway", "--log-level", "debug", "run", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def test_sigkill_while_the_broker_is_down_loses_no_committed_reading(
        tmp_path: Path, broker_factory: BrokerFactory, mqtt_subscriber: SubscriberFactory,
        station: ModbusSimulator) -> None:
    broker = broker_factory(persistence=True)
    subscriber = await mqtt_subscriber(broker, DATA_TOPIC, clean_session=False, client_id="operator")
    config_path = write_config(tmp_path, broker.port, [modbus_device("plc-1", station.port)])
    buffer_path = load_config(config_path).buffer_path
    process = run_gateway_process(config_path)
    try:
        await subscriber.wait_count(1, DATA_TOPIC)
        broker.stop()
        await eventually(lambda: read_stats(buffer_path).messages >= 5, "five polls waiting in the buffer")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=WAIT)
        committed = read_stats(buffer_path).last_seq  # everything the killed gateway had committed
        broker.start()
        process = run_gateway_process(config_path)
        await subscriber.wait_for(lambda messages: set(range(1, committed + 1)) <= set(seqs(messages)),
                                  f"every committed reading up to seq {committed}")
        later = await subscriber.wait_count(len(subscriber.on(DATA_TOPIC)) + 1, DATA_TOPIC)
        assert max(seqs(later)) > committed, "the restarted gateway continues the sequence"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=WAIT)
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr
    assert streams_in_order(subscriber.messages)


async def _black_hole() -> tuple[asyncio.Server, int]:
    """A TCP server that accepts connections and never answers: the worst kind of dead device."""
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_dead_device_never_delays_a_live_one(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory, station: ModbusSimulator) -> None:
    hole, hole_port = await _black_hole()
    other_asset = {"domain": "water-supply", "site": "ps02", "id": "ps02-station", "type": "water-pumping-station"}
    config = write_config(tmp_path, broker.port, [
        modbus_device("live", station.port, poll_interval=0.2),
        modbus_device("dead", hole_port, asset=other_asset, timeout=2.0, poll_interval=0.2),
    ])
    dead_topic = "city/water-supply/ps02/ps02-station/data"
    subscriber = await mqtt_subscriber(broker, "city/#")
    async with running(config):
        await subscriber.wait_for(lambda m: len(readings(m, dead_topic)) >= 9, "three failed polls of the dead device")
    dead = readings(subscriber.messages, dead_topic)
    assert {(r["quality"], r["reason"]) for r in dead} == {("bad", "timeout")}
    assert all(r["value"] is None for r in dead)
    live_times = sorted({r["ts"] for r in readings(subscriber.messages)})
    gaps = [b - a for a, b in itertools.pairwise(live_times)]
    # Each dead poll waits 2 s for a reply; had the live device waited behind it, gaps would be >= 2000 ms.
    assert max(gaps) < 1000, f"the live device was held up: gaps {gaps}"
    states = [json.loads(m.payload)["state"] for m in subscriber.on("city/gateway/test-gw/device/dead/status")]
    assert states == ["failing"], "the state change is announced once, not on every failed poll"
    hole.close()


async def test_an_exception_from_one_unit_behind_a_modbus_gateway_leaves_the_other_unit_good(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory, station: ModbusSimulator) -> None:
    other_asset = {"domain": "water-supply", "site": "ps02", "id": "ps02-station", "type": "water-pumping-station"}
    config = write_config(tmp_path, broker.port, [
        modbus_device("unit-1", station.port),
        modbus_device("unit-7", station.port, unit_id=7, asset=other_asset),  # not served: exception 0B
    ])
    subscriber = await mqtt_subscriber(broker, "city/#")
    async with running(config):
        await subscriber.wait_for(
            lambda m: len(readings(m)) >= 6 and len(readings(m, "city/water-supply/ps02/ps02-station/data")) >= 6,
            "two polls of each unit")
    assert {r["quality"] for r in readings(subscriber.messages)} == {"good"}
    reasons = {r["reason"] for r in readings(subscriber.messages, "city/water-supply/ps02/ps02-station/data")}
    assert reasons == {"device-exception:0B"}
    status = json.loads(subscriber.on("city/gateway/test-gw/device/unit-7/status")[-1].payload)
    assert status["counters"]["exception_replies"] >= 1, "the device's status counts the exception replies"


def test_cli_read_polls_one_device_and_prints_a_table(tmp_path: Path) -> None:
    async def serve_and_read() -> subprocess.CompletedProcess[str]:
        simulator = ModbusSimulator([1])
        await simulator.start()
        simulator.set_registers(1, Table.HOLDING_REGISTER, 0, [250])
        config = write_config(tmp_path, 1883, [modbus_device("plc-1", simulator.port)])
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "read", str(config), "plc-1",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await process.communicate()
            return subprocess.CompletedProcess([], process.returncode or 0, out.decode(), err.decode())
        finally:
            await simulator.stop()

    result = asyncio.run(serve_and_read())
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("outlet_pressure"))
    assert line.split()[1:5] == ["outlet-pressure", "250", "kPa", "good"]


def test_cli_buffer_reports_depth_and_device_states(tmp_path: Path) -> None:
    async def run_without_broker() -> None:
        simulator = ModbusSimulator([1])
        await simulator.start()
        config = write_config(tmp_path, 1, [modbus_device("plc-1", simulator.port)])  # nothing listens on port 1
        try:
            async with running(config) as gateway:
                await eventually(lambda: gateway.pipeline is not None and gateway.pipeline.entries_committed >= 6)
        finally:
            await simulator.stop()

    asyncio.run(run_without_broker())
    result = subprocess.run([sys.executable, "-m", "gateway", "buffer", str(tmp_path / "gateway.yaml")],
                            capture_output=True, text=True, timeout=60, env={**os.environ})
    assert result.returncode == 0, result.stderr
    waiting = next(line for line in result.stdout.splitlines() if "waiting:" in line)
    assert int(waiting.split()[3]) >= 6, result.stdout  # readings
    assert "device plc-1: online" in result.stdout


async def test_a_derived_indicator_declared_in_yaml_is_computed_at_the_edge(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory, station: ModbusSimulator) -> None:
    device = modbus_device("plc-1", station.port,
                           derived=[{"indicator": "pressure-margin", "expression": "outlet-pressure - 140"}])
    config = write_config(tmp_path, broker.port, [device])
    subscriber = await mqtt_subscriber(broker, "city/#")
    async with running(config):
        await subscriber.wait_for(lambda m: any(r["indicator"] == "pressure-margin" for r in readings(m)),
                                  "the derived reading")
    derived = next(r for r in readings(subscriber.messages) if r["indicator"] == "pressure-margin")
    assert derived["value"] == pytest.approx(412.0 - 140.0)
    assert (derived["unit"], derived["quality"], derived["point"]) == ("kPa", "good", "derived:pressure-margin")
    meta = json.loads(subscriber.on("city/water-supply/ps01/ps01-station/meta")[0].payload)
    assert "pressure-margin" in {i["id"] for i in meta["indicators"]}, "the self-description lists it"


async def test_systemd_is_told_when_the_gateway_is_ready_and_when_it_stops(
        tmp_path: Path, broker: Broker, station: ModbusSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stopping right after READY also catches the first connects in progress: pymodbus swallows the
    # cancellation of a connect, and the gateway must stop all the same (it hung here once).
    socket_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(socket_path))
        listener.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(socket_path))
        config = write_config(tmp_path, broker.port, [modbus_device("plc-1", station.port)])
        loop = asyncio.get_running_loop()
        async with running(config):
            ready = await asyncio.wait_for(loop.sock_recv(listener, 64), WAIT)
        stopping = await asyncio.wait_for(loop.sock_recv(listener, 64), WAIT)
    assert (ready, stopping) == (b"READY=1", b"STOPPING=1")


async def test_a_device_back_after_an_outage_is_polled_within_seconds_not_at_its_back_off(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory) -> None:
    # After five failed polls a device's own back-off has grown to 16 s (0.5, 1, 2, 4, 8, 16): were the link
    # reopened only when the device is due, its return would wait that long. The link is retried every
    # couple of seconds instead, and the device polled as soon as it is back.
    station = ModbusSimulator([1])
    await station.start()
    port = station.port
    config = write_config(tmp_path, broker.port, [modbus_device("plc-1", port, poll_interval=0.5)])
    subscriber = await mqtt_subscriber(broker, DATA_TOPIC)

    def failed_polls(messages: list[Received]) -> int:
        return len({r["rx"] for r in readings(messages) if r["quality"] == "bad"})

    try:
        async with running(config) as gateway:
            await subscriber.wait_count(1, DATA_TOPIC)
            await station.stop()
            await subscriber.wait_for(lambda messages: failed_polls(messages) >= 5, "five failed polls")
            station = ModbusSimulator([1], port=port)
            await station.start()
            (status,) = gateway.runners[0].statuses
            due = status.next_due  # when the device's own back-off would poll it next
            await subscriber.wait_for(lambda messages: readings(messages)[-1]["quality"] == "good",
                                      "a good reading again")
            assert time.monotonic() < due, "polled as soon as the link was back, not at the end of the back-off"
    finally:
        await station.stop()
