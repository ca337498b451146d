"""`municipal-gateway write` and `audit`, and the audit log surviving SIGKILL of a running gateway."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.modbus.tables import Table
from gateway.commands.audit import AUDIT_FILE, read_audit
from simulators.modbus import ModbusSimulator
from tests.brokers import WAIT, Broker
from tests.commanding import AUDIT_TOPIC, Operator, command, write_site

HR = Table.HOLDING_REGISTER


@pytest.fixture
async def plc() -> AsyncIterator[ModbusSimulator]:
    simulator = ModbusSimulator([1])
    await simulator.start()
    simulator.set_registers(1, HR, 0, [400, 380, 150, 0])
    yield simulator
    await simulator.stop()


async def cli(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_write_on_site_checks_asks_writes_reads_back_and_audits(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator) -> None:
    config = str(write_site(tmp_path, broker.port, plc.port))
    code, out, err = await cli("write", config, "plc-1", "pressure_setpoint", "455")
    assert code == 2 and "not confirmed" in err and plc.get_registers(1, HR, 0, 1) == [400]
    assert "write 455 kPa to plc-1/pressure_setpoint (the device's value: 455)" in out
    code, out, err = await cli("write", config, "plc-1", "pressure_setpoint", "455", "--yes")
    assert code == 0, err
    assert "done: confirmed, read back 455" in out
    assert plc.get_registers(1, HR, 0, 1) == [455]
    code, out, _ = await cli("write", config, "plc-1", "pressure_setpoint", "9000", "--yes")
    assert code == 2 and "refused: out-of-range" in out
    assert plc.get_registers(1, HR, 0, 1) == [455]
    code, out, _ = await cli("audit", config)
    assert code == 0
    lines = out.splitlines()
    assert any("accepted  plc-1/pressure_setpoint = 455" in line and "from cli/" in line for line in lines)
    assert any("done  plc-1/pressure_setpoint = 455  confirmed  read back 455" in line for line in lines)
    assert any("refused  plc-1/pressure_setpoint = 9000  out-of-range" in line for line in lines)


async def running_gateway(config: Path) -> asyncio.subprocess.Process:
    """`municipal-gateway run` in a process of its own, once it listens for commands."""
    gateway = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", str(config),
                                                   stderr=asyncio.subprocess.PIPE, start_new_session=True)
    await said(gateway, b"command channel listening")
    return gateway


async def said(gateway: asyncio.subprocess.Process, words: bytes) -> None:
    """Read the gateway's log until a line holds `words`."""
    assert gateway.stderr is not None
    lines: list[bytes] = []
    try:
        async with asyncio.timeout(WAIT):
            while not lines or words not in lines[-1]:
                lines.append(await gateway.stderr.readline())
                assert lines[-1], b"".join(lines).decode()  # the gateway ended
    except TimeoutError:
        raise AssertionError(b"".join(lines).decode()) from None


async def kill(gateway: asyncio.subprocess.Process) -> None:
    if gateway.returncode is None:
        os.kill(gateway.pid, signal.SIGKILL)
        await gateway.wait()


async def test_the_audit_log_survives_sigkill_of_a_running_gateway(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator) -> None:
    config = write_site(tmp_path, broker.port, plc.port)
    operator = await Operator(broker.port, "city/gateway/test-gw/cmd/result", AUDIT_TOPIC).start()
    gateway = await running_gateway(config)
    sent = command("pressure_setpoint", 505.0)
    try:
        operator.send({**sent, "issued": command()["issued"]})
        result = await operator.result(sent["id"])
        assert result["status"] == "done"
    finally:
        await kill(gateway)
        operator.close()
    rows = read_audit(tmp_path / "state" / AUDIT_FILE)
    assert [(r.kind, r.status) for r in rows if r.command_id == sent["id"]] == [("command", "accepted"),
                                                                               ("result", "done")]
    assert plc.get_registers(1, HR, 0, 1) == [505]
    code, out, _ = await cli("audit", str(config), "--json")
    assert code == 0
    assert [json.loads(line)["kind"] for line in out.splitlines() if sent["id"] in line] == ["command", "result"]


async def test_a_command_received_but_not_yet_in_the_audit_log_when_the_gateway_is_killed_is_delivered_again(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator) -> None:
    """The broker keeps a command until the gateway has it in its audit log: killed before that, the gateway
    gets it again when it is back, and executes it once."""
    config = write_site(tmp_path, broker.port, plc.port)
    operator = await Operator(broker.port, "city/gateway/test-gw/cmd/result", AUDIT_TOPIC).start()
    gateway = await running_gateway(config)
    sent = command("pressure_setpoint", 515.0)
    # Another writer holds the audit log, so the gateway's commit of the command waits (SQLite's busy timeout).
    holder = sqlite3.connect(tmp_path / "state" / AUDIT_FILE, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        operator.send(sent)
        await said(gateway, f"command {sent['id']} accepted".encode())
        await kill(gateway)
        holder.execute("ROLLBACK")
        holder.close()
        assert plc.get_registers(1, HR, 0, 1) == [400] and not operator.results(sent["id"])
        gateway = await running_gateway(config)
        result = await operator.result(sent["id"])
        assert (result["status"], result["read_back"]) == ("done", 515.0)
    finally:
        holder.close()
        await kill(gateway)
        operator.close()
    assert plc.get_registers(1, HR, 0, 1) == [515]
    rows = read_audit(tmp_path / "state" / AUDIT_FILE)
    assert [(r.kind, r.status) for r in rows if r.command_id == sent["id"]] == [("command", "accepted"),
                                                                               ("result", "done")]
