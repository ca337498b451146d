"""The status listener with real parts: the whole gateway in-process, a simulated PLC, mosquitto, and HTTP through
aiohttp's client against the real listener on 127.0.0.1. Waits are on the listener's own live updates."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from drivers.modbus.tables import Table
from gateway.app import Gateway
from gateway.clock import ClockState, ClockWatch
from gateway.config.loader import load_config
from simulators.modbus import ModbusSimulator
from tests.brokers import Broker, free_port
from tests.conftest import SubscriberFactory
from tests.e2e import running
from tests.status_helpers import serving, status_site, until, value_of


@pytest.fixture
async def plc() -> AsyncIterator[ModbusSimulator]:
    simulator = ModbusSimulator([1])
    await simulator.start()
    simulator.set_registers(1, Table.HOLDING_REGISTER, 0, [412])  # 4.12 bar = 412 kPa
    yield simulator
    await simulator.stop()


async def test_the_page_follows_live_values_and_alarms_and_metrics_and_health_tell_the_same(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    async with running(status_site(tmp_path, broker.port, plc.port, port)) as gateway, aiohttp.ClientSession() as web:
        await serving(gateway)

        async with web.get(base) as page:
            assert page.status == 200 and page.content_type == "text/html"
            html = await page.text()
        assert 'src="static/app.js"' in html and "http" not in html.split("<body>")[0].replace("http-equiv", "")
        for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            async with web.get(base + "static/" + name) as static:
                assert static.status == 200 and static.content_type == kind
                assert static.headers["Content-Security-Policy"].startswith("default-src 'self'")

        seen = await until(web, base, lambda s: value_of(s, "outlet-pressure") == pytest.approx(412.0),
                           "412 kPa on the page")
        assert seen["gateway"] == "test-gw" and seen["uplink"]["connected"] is True
        row = next(v for v in seen["values"] if v["indicator"] == "outlet-pressure")
        assert (row["unit"], row["quality"], row["device"]) == ("kPa", "good", "plc-1")
        assert row["source_ms"] <= seen["time_ms"]
        assert seen["alarms"] == []
        assert [(d["id"], d["state"]) for d in seen["devices"]] == [("plc-1", "online")]
        assert seen["devices"][0]["counters"]["requests"] > 0

        plc.set_registers(1, Table.HOLDING_REGISTER, 0, [250])  # 250 kPa: below the 300 kPa limit
        seen = await until(web, base, lambda s: bool(s["alarms"]), "the low-pressure alarm")
        assert value_of(seen, "outlet-pressure") == pytest.approx(250.0)
        alarm = seen["alarms"][0]
        assert (alarm["alarm"], alarm["severity"], alarm["device"]) == ("low-outlet-pressure", "major", "plc-1")

        async with web.get(base + "metrics") as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            families = {f.name: f for f in text_string_to_metric_families(await reply.text())}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}

        def sample(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        assert sample("municipal_gateway_readings_total") > 0
        assert sample("municipal_gateway_mqtt_messages_published_total") > 0
        assert sample("municipal_gateway_mqtt_bytes_published_total") > 0
        assert sample("municipal_gateway_mqtt_connected") == 1
        assert sample("municipal_gateway_mqtt_reconnects_total") == 0
        assert sample("municipal_gateway_buffer_messages") >= 0
        assert sample("municipal_gateway_buffer_oldest_age_seconds") >= 0
        assert sample("municipal_gateway_buffer_dropped_readings_total") == 0
        assert sample("municipal_gateway_device_polls_total", device="plc-1") > 0
        assert sample("municipal_gateway_device_failures_total", device="plc-1") == 0
        assert sample("municipal_gateway_device_exception_replies_total", device="plc-1") == 0
        assert sample("municipal_gateway_device_state", device="plc-1", state="online") == 1
        assert sample("municipal_gateway_device_poll_duration_seconds_count", device="plc-1") > 0
        assert sample("municipal_gateway_alarms_active", severity="major") == 1
        assert sample("process_resident_memory_bytes") > 10_000_000
        assert sample("process_cpu_seconds_total") > 0
        assert sample("municipal_gateway_event_loop_lag_seconds") >= 0
        assert families["municipal_gateway_info"].samples[0].labels["gateway"] == "test-gw"

        async with web.get(base + "healthz") as reply:
            assert reply.status == 200
            assert (await reply.json())["status"] == "ok"


async def test_bad_paths_and_methods_are_refused_and_nothing_writes(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    async with running(status_site(tmp_path, broker.port, plc.port, port)) as gateway, aiohttp.ClientSession() as web:
        await serving(gateway)
        for path in ("nope", "static/../gateway.yaml", "static/missing.js", "static/index.html", "api", "metrics/x"):
            async with web.get(base + path) as reply:
                assert reply.status == 404, path
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for path in ("", "api/status", "metrics", "healthz", "api/events"):
                async with web.request(method, base + path, data=b"{}") as reply:
                    assert reply.status == 405, (method, path)
                    assert set(reply.headers["Allow"].split(",")) <= {"GET", "HEAD"}
        async with web.head(base + "api/status") as reply:
            assert reply.status == 200


async def test_basic_authentication_guards_everything_but_healthz(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    secret = tmp_path / "status-password"
    secret.write_text("s3cret pass\n")
    config = status_site(tmp_path, broker.port, plc.port, port,
                         auth={"username": "engineer", "password_file": str(secret)})
    async with running(config) as gateway, aiohttp.ClientSession() as web:
        await serving(gateway)
        for path in ("", "api/status", "metrics", "static/app.js", "api/events"):
            async with web.get(base + path) as reply:
                assert reply.status == 401, path
                assert reply.headers["WWW-Authenticate"].startswith("Basic realm=")
        for user, password in (("engineer", "wrong"), ("someone", "s3cret pass")):
            async with web.get(base, headers=basic(user, password)) as reply:
                assert reply.status == 401
        async with web.get(base + "api/status", headers=basic("engineer", "s3cret pass")) as reply:
            assert reply.status == 200
            assert (await reply.json())["gateway"] == "test-gw"
        async with web.get(base + "healthz") as reply:
            assert reply.status == 200


async def test_the_retained_gateway_status_carries_the_gateways_health(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory, plc: ModbusSimulator) -> None:
    topic = "city/gateway/test-gw/status"
    fleet = await mqtt_subscriber(broker, topic)
    config = status_site(tmp_path, broker.port, plc.port, free_port(), enabled=False)  # no listener needed
    async with running(config) as gateway:
        assert gateway.status_listener is None
        await fleet.wait_for(lambda m: any("buffer" in json.loads(x.payload) for x in m), "a status with figures")
    status = next(json.loads(m.payload) for m in fleet.messages if "buffer" in json.loads(m.payload))
    assert status["state"] == "online" and status["version"]
    assert set(status["buffer"]) >= {"messages", "readings", "bytes", "oldest_age_s", "dropped_messages",
                                     "dropped_readings"}
    assert status["process"]["rss_bytes"] > 10_000_000 and status["process"]["cpu_seconds"] > 0
    assert "cpu_percent" in status["process"] and status["uptime_s"] >= 0
    assert status["clock"] in {"synchronised", "unsynchronised", "unknown", "assumed"}
    # The Last Will stays plain, and the clean stop says offline.
    assert json.loads(fleet.messages[-1].payload)["state"] == "offline"


async def test_the_gateways_own_clock_alarm_and_clock_state_are_on_the_page_and_in_the_mqtt_status(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory, plc: ModbusSimulator) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    fleet = await mqtt_subscriber(broker, "city/gateway/test-gw/status")
    gateway = Gateway(load_config(status_site(tmp_path, broker.port, plc.port, port)),
                      clock=ClockWatch(lambda: ClockState.UNSYNCHRONISED))  # a box without NTP
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        async with aiohttp.ClientSession() as web:
            await serving(gateway)
            seen = await until(web, base, lambda s: bool(s["alarms"]), "the clock alarm")
        await fleet.wait_for(lambda m: any(json.loads(x.payload).get("clock") == "unsynchronised" for x in m),
                             "the clock's state in the gateway status")
    finally:
        stop.set()
        await task
    assert seen["clock"] == "unsynchronised"
    [alarm] = seen["alarms"]
    assert (alarm["asset"], alarm["alarm"], alarm["severity"], alarm["device"]) == (
        "gateway", "clock-unsynchronised", "warning", "")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_without_the_listener_aiohttp_is_never_imported() -> None:
    code = ("import sys, gateway.app, gateway.cli, gateway.report\n"
            "assert 'aiohttp' not in sys.modules, 'aiohttp imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


async def test_two_instances_of_one_indicator_are_two_rows(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator) -> None:
    """Two outlet pressures on one asset (two pumps' outlets): each is its own row on the page (and in `watch`),
    named as derived expressions and guards name them."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    config = status_site(tmp_path, broker.port, plc.port, port)
    devices = yaml.safe_load((tmp_path / "devices.yaml").read_text())
    points = devices["devices"][0]["points"]
    first = next(p for p in points if p["name"] == "outlet_pressure")
    first["instance"] = "pump-1"
    points.append({**first, "name": "outlet_pressure_2", "address": 1, "instance": "pump-2", "processing": None})
    (tmp_path / "devices.yaml").write_text(yaml.safe_dump(devices))
    plc.set_registers(1, Table.HOLDING_REGISTER, 1, [398])
    async with running(config) as gateway, aiohttp.ClientSession() as web:
        await serving(gateway)
        snapshot = await until(web, base, lambda s: value_of(s, "outlet-pressure[pump-2]") is not None,
                               "the second instance on the page")
        assert (value_of(snapshot, "outlet-pressure[pump-1]"), value_of(snapshot, "outlet-pressure[pump-2]")) == (
            412, 398)
