"""Street-lighting schedules at the gateway, with a clock the test moves: a real pymodbus cabinet PLC, mosquitto,
the gateway in-process. Whether the contactor coil and the dimming register changed is read from the simulator."""

from __future__ import annotations

import asyncio
import datetime
import zoneinfo
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from astral import Observer
from astral.sun import sunset

from drivers.modbus.tables import Table
from gateway.app import Gateway
from gateway.clock import ClockState, ClockWatch
from gateway.commands.audit import AUDIT_FILE, read_audit
from gateway.config.loader import load_config
from gateway.lighting import schedules, tonight
from simulators.modbus import ModbusSimulator
from tests.brokers import Broker, eventually
from tests.commanding import Operator, command

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
DAY = datetime.date(2026, 12, 1)
SUNSET_MS = int(sunset(Observer(31.23, 121.47), DAY, tzinfo=SHANGHAI).timestamp() * 1000)
MINUTE = 60_000
LIGHTING_TOPIC = "city/gateway/test-gw/lighting/"

CATALOGUE = {
    "domains": [{"id": "street-lighting", "name": {"en": "Street lighting", "zh": "路灯"}}],
    "asset_types": [{"id": "lighting-cabinet", "domain": "street-lighting", "name": {"en": "Cabinet", "zh": "箱"},
                     "indicators": ["contactor-closed", "dimming-level"]}],
    "indicators": [
        {"id": "contactor-closed", "name": {"en": "Contactor closed", "zh": "接触器"}, "kind": "state",
         "unit": "state", "quantified": "state"},
        {"id": "dimming-level", "name": {"en": "Dimming level", "zh": "调光"}, "kind": "measurement", "unit": "%",
         "range": [0, 100], "quantified": "instantaneous"},
    ],
}


class Clock:
    """The wall clock the gateway's schedules and commands use; the test moves it."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def write_cabinet(directory: Path, broker_port: int, modbus_port: int, **lighting: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "catalogue.yaml").write_text(yaml.safe_dump(CATALOGUE, allow_unicode=True))
    device = {"id": "cab-1", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": modbus_port,
              "poll_interval": 0.2, "timeout": 1.0,
              "asset": {"domain": "street-lighting", "site": "north", "id": "cab-1", "type": "lighting-cabinet"},
              "points": [
                  {"name": "contactor", "indicator": "contactor-closed", "table": "coil", "address": 0,
                   "writable": True, "write": {"min_interval": 0}},
                  {"name": "dimming", "indicator": "dimming-level", "table": "holding_register", "address": 10,
                   "type": "uint16", "writable": True, "write": {"range": [0, 100], "min_interval": 0}}]}
    (directory / "devices.yaml").write_text(yaml.safe_dump({"devices": [device]}))
    main = {
        "gateway": {"id": "test-gw", "state_dir": str(directory / "state")},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "reconnect": {"initial_delay": 0.1, "max_delay": 0.5}},
        "buffer": {"synchronous": "normal"}, "clock": {"source": "none"},
        "site": {"latitude": 31.23, "longitude": 121.47, "timezone": "Asia/Shanghai"},
        "lighting": {"circuits": [
            {"id": "north-a", "device": "cab-1", "point": "contactor", "switch_on": "sunset+10",
             "switch_off": "sunrise-15", "exceptions": [{"date": "2026-12-03", "dark": True}]},
            {"id": "north-dim", "device": "cab-1", "point": "dimming", "switch_on": "sunset+10",
             "switch_off": "sunrise-15", "levels": [{"at": "23:00", "level": 50}, {"at": "05:00", "level": 100}]}],
            **lighting},
        "catalogue": "catalogue.yaml", "include": ["devices.yaml"],
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(main))
    return path


@pytest.fixture
async def cabinet() -> AsyncIterator[ModbusSimulator]:
    simulator = ModbusSimulator([1])
    await simulator.start()
    yield simulator
    await simulator.stop()


class Site:
    def __init__(self, config: Path, wall: Clock, **options: Any) -> None:
        self.gateway = Gateway(load_config(config), command_time=wall, **options)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.gateway.run(self.stop))

    async def ready(self) -> Site:
        await eventually(lambda: self.gateway.lighting is not None or self.task.done(), "the lighting controller")
        await eventually(lambda: any(s.polls for r in self.gateway.runners for s in r.statuses), "a first poll")
        return self

    def moved(self) -> None:
        assert self.gateway.lighting is not None
        self.gateway.lighting.poke()

    async def close(self) -> None:
        self.stop.set()
        await self.task


def coil(cabinet: ModbusSimulator) -> bool:
    return cabinet.get_bits(1, Table.COIL, 0, 1)[0]


def level(cabinet: ModbusSimulator) -> int:
    return cabinet.get_registers(1, Table.HOLDING_REGISTER, 10, 1)[0]


def schedule_writes(directory: Path) -> int:
    return sum(1 for r in read_audit(directory / "state" / AUDIT_FILE, 1000)
               if r.kind == "command" and str(r.entry.get("source", "")).startswith("schedule/"))


async def test_the_schedule_switches_across_sunset_dims_at_night_and_reconciles_after_a_restart(
        tmp_path: Path, broker: Broker, cabinet: ModbusSimulator) -> None:
    config = write_cabinet(tmp_path, broker.port, cabinet.port)
    cabinet.set_bits(1, Table.COIL, 0, [True])  # left on by hand in the afternoon
    clock = Clock(SUNSET_MS - 30 * MINUTE)
    operator = await Operator(broker.port, LIGHTING_TOPIC + "#").start()
    try:
        await _across_sunset(tmp_path, config, clock, cabinet, operator)
    finally:
        operator.close()


async def _across_sunset(tmp_path: Path, config: Path, clock: Clock, cabinet: ModbusSimulator,
                         operator: Operator) -> None:
    site = await Site(config, clock).ready()
    try:
        await eventually(lambda: not coil(cabinet), "the contactor opened: the schedule says off before sunset")
        await operator.wait_for(lambda m: any(t.endswith("/north-a") and b["reads"] is False for t, b, _ in m),
                                "the circuit's retained state")
        state = [b for t, b, _ in operator.messages if t.endswith("/north-a")][-1]
        assert state["mode"] == "schedule" and state["should_be"] is False
        assert [e["event"] for e in state["next"]] == ["on", "off"]
        assert state["next"][0]["at"] == SUNSET_MS + 10 * MINUTE

        clock.ms = SUNSET_MS + 11 * MINUTE
        site.moved()
        await eventually(lambda: coil(cabinet) and level(cabinet) == 100, "on at sunset + 10 min, at 100 %")
        clock.ms = int(datetime.datetime(2026, 12, 1, 23, 30, tzinfo=SHANGHAI).timestamp() * 1000)
        site.moved()
        await eventually(lambda: level(cabinet) == 50, "dimmed to 50 % from 23:00")
        assert coil(cabinet)
    finally:
        await site.close()
    writes = schedule_writes(tmp_path)
    assert writes == 4  # the contactor off before sunset, then on; the dimming level 100 % at sunset, 50 % at 23:00
    site = await Site(config, clock).ready()
    try:
        await operator.wait_for(lambda m: sum(1 for t, b, _ in m if t.endswith("/north-dim")) >= 3,
                                "the restarted gateway's state of the dimming circuit")
        await eventually(lambda: all(s.polls >= 3 for r in site.gateway.runners for s in r.statuses), "polls")
    finally:
        await site.close()
    assert schedule_writes(tmp_path) == writes, "after the restart nothing was written: the circuits were right"


async def test_an_override_holds_for_its_duration_then_the_schedule_returns(
        tmp_path: Path, broker: Broker, cabinet: ModbusSimulator) -> None:
    config = write_cabinet(tmp_path, broker.port, cabinet.port)
    clock = Clock(SUNSET_MS + 60 * MINUTE)  # night: the schedule says on
    operator = await Operator(broker.port, "city/gateway/test-gw/cmd/result", LIGHTING_TOPIC + "#").start()
    site = await Site(config, clock).ready()
    try:
        await eventually(lambda: coil(cabinet), "on by the schedule")
        assert site.gateway.command_channel is not None
        await site.gateway.command_channel.wait_subscribed()
        override = {**command(issued=clock.ms), "circuit": "north-a", "value": False, "duration": 3600}
        del override["device"], override["point"]
        operator.send(override)
        result = await operator.result(override["id"])
        assert (result["status"], result["mode"], result["override_until"]) == ("done", "override",
                                                                               clock.ms + 3_600_000)
        assert not coil(cabinet)
        await operator.wait_for(lambda m: any(t.endswith("/north-a") and b["mode"] == "override" for t, b, _ in m),
                                "the override in the retained state")
        clock.ms += 30 * MINUTE
        site.moved()
        assert not coil(cabinet), "still overridden"
        clock.ms += 40 * MINUTE  # past the override's end
        site.moved()
        await eventually(lambda: coil(cabinet), "back on by the schedule after the override")
        bad = {**command(issued=clock.ms), "circuit": "nowhere", "value": True, "duration": 60}
        del bad["device"], bad["point"]
        operator.send(bad)
        assert (await operator.result(bad["id"]))["reason"] == "unknown-circuit"
    finally:
        await site.close()
        operator.close()


async def test_nothing_is_switched_on_a_clock_known_unsynchronised(
        tmp_path: Path, broker: Broker, cabinet: ModbusSimulator) -> None:
    config = write_cabinet(tmp_path, broker.port, cabinet.port)
    clock = Clock(SUNSET_MS + 60 * MINUTE)
    operator = await Operator(broker.port, LIGHTING_TOPIC + "#").start()
    site = await Site(config, clock, clock=ClockWatch(lambda: ClockState.UNSYNCHRONISED)).ready()
    try:
        await operator.wait_for(lambda m: any(b.get("held") == "clock-unsynchronised" for _, b, _ in m),
                                "the held state reported")
        assert not coil(cabinet) and level(cabinet) == 0
    finally:
        await site.close()
        operator.close()


def test_tonights_switching_times_and_an_exception_date(tmp_path: Path) -> None:
    config = load_config(write_cabinet(tmp_path, 1883, 502))
    made = schedules(config.main.lighting, config.main.site, config.devices)
    noon = int(datetime.datetime(2026, 12, 1, 12, 0, tzinfo=SHANGHAI).timestamp() * 1000)
    lines = tonight(made, noon)
    assert lines[0] == "circuit north-a (cab-1/contactor, Asia/Shanghai): now off"
    on = datetime.datetime.fromtimestamp((SUNSET_MS + 10 * MINUTE) / 1000, SHANGHAI)
    assert lines[1] == f"  {on:%Y-%m-%d %H:%M}  on     -> on"
    assert any("23:00  level  -> 50 %" in line for line in lines)
    dark_day = int(datetime.datetime(2026, 12, 3, 12, 0, tzinfo=SHANGHAI).timestamp() * 1000)
    assert tonight(made[:1], dark_day)[1:] == ["  no switching in the coming 24 hours"], "3 December stays dark"


def test_the_schedule_command_prints_tonights_switching_times(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = write_cabinet(tmp_path, 1883, 502)
    result = subprocess.run([sys.executable, "-m", "gateway", "schedule", str(config), "--at", "2026-12-01T12:00"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    on = datetime.datetime.fromtimestamp((SUNSET_MS + 10 * MINUTE) / 1000, SHANGHAI)
    assert result.stdout.splitlines()[:2] == ["circuit north-a (cab-1/contactor, Asia/Shanghai): now off",
                                              f"  {on:%Y-%m-%d %H:%M}  on     -> on"]
    assert "2026-12-01 23:00  level  -> 50 %" in result.stdout
