"""The clock end to end: a gateway whose system clock is not synchronised flags its readings' time as uncertain
and raises its own alarm, clears both once NTP has set the clock, remembers the alarm across a restart, and
tells the centre when the clock jumped.

Real parts: the Modbus simulator, the whole gateway and mosquitto. What cannot be done here is to unsynchronise
(or step) this machine's clock, so the gateway gets a ClockWatch whose answers the test controls: the kernel's
side of it is tested in tests/test_clock.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from gateway.clock import ClockState, ClockWatch
from simulators.modbus import ModbusSimulator
from tests.brokers import Broker, Received
from tests.conftest import SubscriberFactory
from tests.e2e import DATA_TOPIC, modbus_device, readings, running, station_points, write_config

GATEWAY_ALARMS = "city/gateway/test-gw/alarm"
GATEWAY_ACTIVE = "city/gateway/test-gw/active-alarms"
HOUR_MS = 3_600_000


class ControlledClock:
    """What the kernel would answer, and how far the wall clock has been stepped."""

    def __init__(self, state: ClockState) -> None:
        self.state = state
        self.step_ms = 0

    def watch(self) -> ClockWatch:
        return ClockWatch(lambda: self.state, wall_ms=lambda: time.time_ns() // 1_000_000 + self.step_ms)


def events(messages: list[Received]) -> list[tuple[str, str]]:
    return [(e["alarm"], e["event"]) for m in messages if m.topic == GATEWAY_ALARMS
            for e in json.loads(m.payload)["events"]]


def active(messages: list[Received]) -> list[str]:
    latest = [m for m in messages if m.topic == GATEWAY_ACTIVE][-1]
    return [a["alarm"] for a in json.loads(latest.payload)["active"]]


def config_with_a_quick_clock(tmp_path: Path, broker: Broker, port: int, **pressure: Any) -> Path:
    points = [{**p, **pressure} for p in station_points() if p["name"] == "outlet_pressure"]
    path = write_config(tmp_path, broker.port, [modbus_device("plc-1", port, points=points)])
    main = yaml.safe_load(path.read_text())
    main["clock"]["check_interval"] = 0.1
    path.write_text(yaml.safe_dump(main))
    return path


async def test_an_unsynchronised_clock_flags_readings_and_raises_an_alarm_until_ntp_sets_it(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory, plc: ModbusSimulator) -> None:
    config = config_with_a_quick_clock(tmp_path, broker, plc.port)
    clock = ControlledClock(ClockState.UNSYNCHRONISED)
    centre = await mqtt_subscriber(broker, DATA_TOPIC, GATEWAY_ALARMS, GATEWAY_ACTIVE)
    async with running(config, clock.watch()):
        await centre.wait_for(lambda m: ("clock-unsynchronised", "raised") in events(m), "the gateway's alarm")
        await centre.wait_for(lambda m: any(json.loads(x.payload).get("time_uncertain") for x in m
                                            if x.topic == DATA_TOPIC), "readings flagged time_uncertain")
        assert active(centre.messages) == ["clock-unsynchronised"]
        clock.state = ClockState.SYNCHRONISED
        await centre.wait_for(lambda m: ("clock-unsynchronised", "cleared") in events(m), "the alarm cleared")
        flagged = len(readings(centre.messages))
        await centre.wait_for(lambda m: len(readings(m)) > flagged + 2, "readings after the clock was set")
    batches = [json.loads(m.payload) for m in centre.messages if m.topic == DATA_TOPIC]
    first_clear = next(i for i, b in enumerate(batches) if "time_uncertain" not in b)
    assert all("time_uncertain" not in b for b in batches[first_clear:])
    assert active(centre.messages) == []


async def test_the_alarm_is_remembered_across_a_restart_and_not_raised_twice(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory, plc: ModbusSimulator) -> None:
    config = config_with_a_quick_clock(tmp_path, broker, plc.port)
    clock = ControlledClock(ClockState.UNSYNCHRONISED)
    centre = await mqtt_subscriber(broker, GATEWAY_ALARMS, GATEWAY_ACTIVE)
    async with running(config, clock.watch()):
        await centre.wait_for(lambda m: ("clock-unsynchronised", "raised") in events(m), "the gateway's alarm")
    announced = len([m for m in centre.messages if m.topic == GATEWAY_ACTIVE])
    async with running(config, clock.watch()) as gateway:
        await centre.wait_for(lambda m: len([x for x in m if x.topic == GATEWAY_ACTIVE]) > announced,
                              "the active alarms announced again at start")
        assert gateway.clock.state is ClockState.UNSYNCHRONISED
    assert events(centre.messages) == [("clock-unsynchronised", "raised")]
    assert active(centre.messages) == ["clock-unsynchronised"]


async def test_a_jump_of_the_clock_is_told_and_the_open_window_is_published_as_interrupted(
        tmp_path: Path, broker: Broker, mqtt_subscriber: SubscriberFactory, plc: ModbusSimulator) -> None:
    # An hour's window: it is open when the clock steps, and would not close by itself during the test.
    config = config_with_a_quick_clock(tmp_path, broker, plc.port, processing={"windows": [3600]})
    clock = ControlledClock(ClockState.SYNCHRONISED)
    stats_topic = DATA_TOPIC.replace("/data", "/stats")
    centre = await mqtt_subscriber(broker, GATEWAY_ALARMS, stats_topic, DATA_TOPIC)
    async with running(config, clock.watch()):
        await centre.wait_for(lambda m: len(readings(m)) >= 1, "a reading in the open window")
        clock.step_ms = -HOUR_MS  # an operator sets the clock back by an hour
        await centre.wait_for(lambda m: ("clock-jumped", "occurred") in events(m), "the jump told")
        await centre.wait_for(lambda m: any(s.get("interrupted") for x in m if x.topic == stats_topic
                                            for s in json.loads(x.payload)["windows"]),
                              "the open window closed as interrupted")
    (jumped,) = [e for m in centre.messages if m.topic == GATEWAY_ALARMS for e in json.loads(m.payload)["events"]]
    assert jumped["message"].startswith("the system clock jumped backwards by 60 min")
