"""Commands from the control room, end to end: a real mosquitto, a real pymodbus server, the gateway in-process.
Each test looks at the simulator's registers to see whether a command reached the device."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.modbus.tables import Table
from gateway.app import Gateway
from gateway.clock import ClockState, ClockWatch
from gateway.commands.audit import AUDIT_FILE, read_audit
from gateway.config.loader import load_config
from simulators.modbus import ModbusSimulator
from tests.brokers import WAIT, Broker, eventually
from tests.commanding import AUDIT_TOPIC, Operator, command, write_site

HR = Table.HOLDING_REGISTER


@pytest.fixture
async def plc() -> AsyncIterator[ModbusSimulator]:
    simulator = ModbusSimulator([1])
    await simulator.start()
    simulator.set_registers(1, HR, 0, [400, 380, 150, 0])  # setpoint 400 kPa, outlet 380 kPa, wet well 1.5 m
    yield simulator
    await simulator.stop()


@pytest.fixture
async def operator(broker: Broker) -> AsyncIterator[Operator]:
    client = await Operator(broker.port, "city/gateway/test-gw/cmd/result", AUDIT_TOPIC, "control/replies").start()
    yield client
    client.close()


class Running:
    def __init__(self, gateway: Gateway, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.gateway, self.task, self.stop = gateway, task, stop

    async def ready(self) -> Running:
        """Commands are listened to and the device has been polled (guards have their inputs)."""
        await eventually(lambda: self.gateway.command_channel is not None or self.task.done(), "the command path")
        assert self.gateway.command_channel is not None, self.task
        await asyncio.wait_for(self.gateway.command_channel.wait_subscribed(), WAIT)
        await eventually(lambda: any(s.polls for r in self.gateway.runners for s in r.statuses), "a first poll")
        return self

    async def close(self) -> None:
        self.stop.set()
        await self.task


async def start(config: Path, **options: object) -> Running:
    gateway = Gateway(load_config(config), **options)  # type: ignore[arg-type]
    stop = asyncio.Event()
    return await Running(gateway, asyncio.create_task(gateway.run(stop)), stop).ready()


async def test_a_setpoint_is_written_as_its_raw_value_read_back_confirmed_and_audited(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator, operator: Operator) -> None:
    site = await start(write_site(tmp_path, broker.port, plc.port))
    try:
        sent = command("pressure_setpoint", 455.0, source="control-room/alice")
        operator.send(sent)
        result = await operator.result(sent["id"])
        assert plc.get_registers(1, HR, 0, 1) == [455]  # 4.55 bar in 0.01 bar
        assert (result["status"], result["confirmation"], result["read_back"]) == ("done", "confirmed", 455.0)
        await operator.wait_for(lambda m: len([b for t, b, _ in m if t == AUDIT_TOPIC and b["id"] == sent["id"]]) == 2,
                                "the command and its result on the audit topic")
        kinds = [b["kind"] for b in operator.on(AUDIT_TOPIC) if b["id"] == sent["id"]]
        assert kinds == ["command", "result"]
        assert all(isinstance(b["seq"], int) for b in operator.on(AUDIT_TOPIC))
    finally:
        await site.close()
    rows = read_audit(tmp_path / "state" / AUDIT_FILE)
    assert [(r.kind, r.status) for r in rows] == [("command", "accepted"), ("result", "done")]
    assert rows[0].entry["source"] == "control-room/alice" and rows[0].entry["raw"] == 455


REFUSALS = [
    (command("pressure_setpoint", 700.0), "out-of-range"),
    (command("pressure_setpoint", 452.0), "not-on-step"),
    (command("pressure_setpoint", "high"), "wrong-type"),
    (command("pressure_setpoint", True), "wrong-type"),
    (command("outlet_pressure", 400.0), "not-writable"),
    (command("no_such_point", 1), "unknown-point"),
    (command(device="plc-9"), "unknown-device"),
    (command("run_command", 2), "wrong-type"),
    (command(issued=time.time_ns() // 1_000_000 - 31_000), "expired"),
    (command(max_age=5, issued=time.time_ns() // 1_000_000 - 6_000), "expired"),
    (command(expires=time.time_ns() // 1_000_000 - 1), "expired"),
    (command(issued=time.time_ns() // 1_000_000 + 3_600_000), "clock-skew"),
    ({"id": "no-issued", "device": "plc-1", "point": "pressure_setpoint", "value": 450}, "malformed"),
    ({"id": "extra-key", "device": "plc-1", "point": "pressure_setpoint", "value": 450, "issued": 1,
      "adress": 3}, "malformed"),
]


async def test_every_refusal_names_its_reason_and_nothing_reaches_the_device(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator, operator: Operator) -> None:
    site = await start(write_site(tmp_path, broker.port, plc.port))
    try:
        before = plc.get_registers(1, HR, 0, 4), plc.get_bits(1, Table.COIL, 0, 1)
        for body, reason in REFUSALS:
            operator.send(body)
            result = await operator.result(body["id"])
            assert (result["status"], result["reason"]) == ("refused", reason), result
        for raw in (b"not json", b"[1, 2]", b'{"id": 5}', b"\xff\xfe", b"{" * 5000, b"NaN"):
            operator.send(raw)
        await operator.wait_for(lambda m: sum(1 for t, b, _ in m if t.endswith("/result") and b.get("id") is None) == 6,
                                "six refusals without an id")
        assert all(b["reason"] == "malformed" for b in operator.on() if b.get("id") is None)
        assert (plc.get_registers(1, HR, 0, 4), plc.get_bits(1, Table.COIL, 0, 1)) == before
        # The gateway is still well: the next good command goes through.
        good = command("pressure_setpoint", 500.0)
        operator.send(good)
        assert (await operator.result(good["id"]))["status"] == "done"
    finally:
        await site.close()


async def test_a_guard_refuses_while_it_does_not_hold_and_allows_once_it_does(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator, operator: Operator) -> None:
    plc.set_registers(1, HR, 2, [90])  # the wet well at 0.9 m, below the 1.2 m the guard asks for
    site = await start(write_site(tmp_path, broker.port, plc.port))
    try:
        start_pump = command("run_command", True)
        operator.send(start_pump)
        refused = await operator.result(start_pump["id"])
        assert (refused["status"], refused["reason"]) == ("refused", "guard")
        assert "wet-well-level=0.9" in refused["message"]
        assert plc.get_bits(1, Table.COIL, 0, 1) == [False]
        plc.set_registers(1, HR, 2, [160])
        runner = site.gateway.runners[0]
        polls = runner.statuses[0].polls
        await eventually(lambda: runner.statuses[0].polls >= polls + 2, "the new level read")
        again = command("run_command", True)
        operator.send(again)
        result = await operator.result(again["id"])
        assert (result["status"], result["confirmation"], result["read_back"]) == ("done", "confirmed", True)
        assert plc.get_bits(1, Table.COIL, 0, 1) == [True]
    finally:
        await site.close()


async def test_a_redelivered_id_is_executed_once_and_answered_twice_also_after_a_restart(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator, operator: Operator) -> None:
    config = write_site(tmp_path, broker.port, plc.port)
    site = await start(config)
    sent = command("pressure_setpoint", 300.0)
    try:
        operator.send(sent)
        first = await operator.result(sent["id"])
        plc.set_registers(1, HR, 0, [400])  # someone on site sets it back
        operator.send(sent)
        second = (await operator.result(sent["id"], count=2)) and operator.results(sent["id"])[1]
    finally:
        await site.close()
    assert first["status"] == "done" and second["status"] == "done" and second["duplicate"] is True
    assert plc.get_registers(1, HR, 0, 1) == [400], "the second delivery was not executed"
    site = await start(config)
    try:
        operator.send(sent)
        third = (await operator.result(sent["id"], count=3)) and operator.results(sent["id"])[2]
        assert third["duplicate"] is True and third["status"] == "done"
        assert plc.get_registers(1, HR, 0, 1) == [400]
    finally:
        await site.close()


async def test_mqtt5_response_topic_and_correlation_data_are_honoured(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator, operator: Operator) -> None:
    site = await start(write_site(tmp_path, broker.port, plc.port))
    try:
        sent = command("pressure_setpoint", 350.0)
        operator.send(sent, response_topic="control/replies", correlation=b"\x00req-17")
        await operator.result(sent["id"], topic="control/replies")
        replies = [(b, c) for t, b, c in operator.messages if t == "control/replies"]
        assert replies[0][0]["id"] == sent["id"] and replies[0][1] == b"\x00req-17"
        assert operator.results(sent["id"])  # and on the result topic
        # A response topic on the gateway's own data topics is not used: a result must not pose as readings.
        watcher = await Operator(broker.port, "city/water-supply/ps01/ps01-station/data", "control/replies").start()
        try:
            sneaky = command("pressure_setpoint", 355.0)
            operator.send(sneaky, response_topic="city/water-supply/ps01/ps01-station/data")
            after = command("pressure_setpoint", 360.0)  # its reply comes after the one not sent, on one connection
            operator.send(after, response_topic="control/replies", correlation=b"2")
            await watcher.result(after["id"], topic="control/replies")
            assert not [b for t, b, _ in watcher.messages if t.endswith("/data") and "status" in b]
        finally:
            watcher.close()
    finally:
        await site.close()


async def test_a_command_sent_while_the_gateway_was_away_and_delivered_after_its_expiry_is_never_executed(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator, operator: Operator) -> None:
    config = write_site(tmp_path, broker.port, plc.port)
    site = await start(config)  # the broker now keeps a session (and the subscription) for the gateway
    await site.close()
    late = command("pressure_setpoint", 550.0)  # max age 30 s by default
    fresh = command("pressure_setpoint", 250.0, max_age=300)
    operator.send(late)
    operator.send(fresh)
    # The gateway comes back 60 s later (by its clock): the broker delivers both commands then.
    site = await start(config, command_time=lambda: time.time_ns() // 1_000_000 + 60_000)
    try:
        result = await operator.result(late["id"])
        assert (result["status"], result["reason"]) == ("refused", "expired")
        assert (await operator.result(fresh["id"]))["status"] == "done"
    finally:
        await site.close()
    assert plc.get_registers(1, HR, 0, 1) == [250], "the expired command never reached the device"


async def test_signed_commands_good_bad_and_replayed(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator, operator: Operator,
        monkeypatch: pytest.MonkeyPatch) -> None:
    secret = b"correct horse battery staple"
    monkeypatch.setenv("CMD_SECRET", secret.decode())
    config = write_site(tmp_path, broker.port, plc.port, signature={"secret_env": "CMD_SECRET", "window": 30})
    site = await start(config)
    try:
        now = time.time_ns() // 1_000_000
        cases = [(command(value=210.0), "bad-signature"),
                 (command(value=220.0, secret=b"wrong secret"), "bad-signature"),
                 ({**command(value=230.0, secret=secret), "value": 600.0}, "bad-signature"),  # tampered
                 (command(value=240.0, secret=secret, issued=now - 40_000, max_age=300), "replayed")]
        for body, reason in cases:
            operator.send(body)
            result = await operator.result(body["id"])
            assert (result["status"], result["reason"]) == ("refused", reason)
            assert secret.decode() not in json.dumps(result)
        assert plc.get_registers(1, HR, 0, 1) == [400]
        good = command(value=260.0, secret=secret)
        operator.send(good)
        assert (await operator.result(good["id"]))["status"] == "done"
        assert plc.get_registers(1, HR, 0, 1) == [260]
    finally:
        await site.close()
    assert secret.decode() not in (tmp_path / "state" / AUDIT_FILE).read_bytes().decode("latin-1")


async def test_commands_are_refused_while_the_clock_is_known_unsynchronised_unless_allowed(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator, operator: Operator) -> None:
    unsynchronised = ClockWatch(lambda: ClockState.UNSYNCHRONISED)
    site = await start(write_site(tmp_path / "strict", broker.port, plc.port), clock=unsynchronised)
    try:
        sent = command(value=480.0)
        operator.send(sent)
        result = await operator.result(sent["id"])
        assert (result["status"], result["reason"]) == ("refused", "clock-unsynchronised")
        assert plc.get_registers(1, HR, 0, 1) == [400]
    finally:
        await site.close()
    allowed = write_site(tmp_path / "lenient", broker.port, plc.port, allow_unsynchronised_clock=True)
    site = await start(allowed, clock=ClockWatch(lambda: ClockState.UNSYNCHRONISED))
    try:
        sent = command(value=480.0)
        operator.send(sent)
        result = await operator.result(sent["id"])
        assert (result["status"], result["clock"]) == ("done", "unsynchronised")
        assert plc.get_registers(1, HR, 0, 1) == [480]
    finally:
        await site.close()


async def test_a_flood_of_commands_is_rate_limited_and_polling_goes_on(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator) -> None:
    site = await start(write_site(tmp_path, broker.port, plc.port, rate={"per_point": 2, "per_gateway": 20}))
    # Results only: with the audit records too, 2,000 messages would pass the broker's queue for one client.
    operator = await Operator(broker.port, "city/gateway/test-gw/cmd/result").start()
    try:
        status = site.gateway.runners[0].statuses[0]
        polls_before = status.polls
        flood = [command("pressure_setpoint", 200.0 + 5 * (i % 80)) for i in range(1000)]
        for body in flood:
            operator.send(body)
        await operator.wait_for(lambda m: len({b.get("id") for t, b, _ in m if t.endswith("/result")}) >= 1000,
                                "a result for every command of the flood")
        outcomes = [operator.results(body["id"])[0] for body in flood]
        done = [r for r in outcomes if r["status"] == "done"]
        limited = [r for r in outcomes if r.get("reason") == "rate-limited"]
        assert len(done) + len(limited) == 1000
        assert 1 <= len(done) <= 50, "the point's rate bounds what reaches the device"
        assert site.gateway.commands is not None and site.gateway.commands.executed == len(done)
        assert status.polls > polls_before and status.state.value == "online"
    finally:
        operator.close()
        await site.close()


async def test_a_command_left_without_result_by_a_killed_gateway_is_recorded_as_interrupted(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator, operator: Operator) -> None:
    from gateway.commands.audit import AuditLog

    config = write_site(tmp_path, broker.port, plc.port)
    (tmp_path / "state").mkdir(mode=0o700)
    audit = await AuditLog.open(tmp_path / "state" / AUDIT_FILE, 100)
    writer = asyncio.create_task(audit.run())
    await audit.append("command", {"id": "cut-short", "device": "plc-1", "point": "pressure_setpoint",
                                   "value": 500.0, "status": "accepted"})
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await audit.close()
    site = await start(config)
    try:
        await operator.wait_for(lambda m: any(t == AUDIT_TOPIC and b["id"] == "cut-short" for t, b, _ in m),
                                "the interrupted command's result on the audit topic")
        (record,) = [b for b in operator.on(AUDIT_TOPIC) if b["id"] == "cut-short"]
        assert (record["kind"], record["status"], record["reason"]) == ("result", "failed", "interrupted")
        again = command("pressure_setpoint", 300.0, id="cut-short")  # the same id again: answered, not executed
        operator.send(again)
        assert (await operator.result("cut-short"))["reason"] == "interrupted"
        assert plc.get_registers(1, HR, 0, 1) == [400]
    finally:
        await site.close()


def edit_points(directory: Path, edit: Callable[[dict[str, dict[str, Any]]], None]) -> None:
    """Change the site's points (by name) before the gateway starts."""
    devices = yaml.safe_load((directory / "devices.yaml").read_text())
    points = devices["devices"][0]["points"]
    by_name = {p["name"]: p for p in points}
    edit(by_name)
    devices["devices"][0]["points"] = list(by_name.values())
    (directory / "devices.yaml").write_text(yaml.safe_dump(devices))


async def test_a_guard_names_one_instance_of_an_indicator_the_asset_has_twice(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator, operator: Operator) -> None:
    config = write_site(tmp_path, broker.port, plc.port)

    def two_wells(points: dict[str, dict[str, Any]]) -> None:
        north = points["wet_well_level"]
        north["instance"] = "north"
        points["wet_well_level_south"] = {**north, "name": "wet_well_level_south", "address": 4, "instance": "south"}
        points["run_command"]["write"]["guard"] = "wet-well-level[north] >= 1.2"

    edit_points(tmp_path, two_wells)
    plc.set_registers(1, HR, 2, [160, 0, 0])  # north at 1.6 m; south (register 4) empty: the guard asks north
    site = await start(config)
    try:
        start_pump = command("run_command", True)
        operator.send(start_pump)
        result = await operator.result(start_pump["id"])
        assert (result["status"], result.get("message")) == ("done", None), result
        assert plc.get_bits(1, Table.COIL, 0, 1) == [True]
    finally:
        await site.close()


@pytest.mark.parametrize(("confirm_within", "confirmation", "read_back"), [(5.0, "confirmed", 455.0),
                                                                          (0.3, "mismatch", 400.0)])
async def test_a_slow_actuator_is_confirmed_by_a_later_poll_within_confirm_within(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator, operator: Operator,
        confirm_within: float, confirmation: str, read_back: float) -> None:
    """The PLC takes 1 s to show a new setpoint: the read-back right after the write still says 400 kPa."""
    config = write_site(tmp_path, broker.port, plc.port)
    edit_points(tmp_path, lambda points: points["pressure_setpoint"]["write"].update(confirm_within=confirm_within))
    plc.write_delay = 1.0
    site = await start(config)
    try:
        sent = command("pressure_setpoint", 455.0)
        operator.send(sent)
        result = await operator.result(sent["id"])
        assert (result["status"], result["confirmation"], result["read_back"]) == ("done", confirmation, read_back)
    finally:
        await site.close()
