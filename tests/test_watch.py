"""`municipal-gateway watch`: read from the real listener of a gateway running in-process with a simulated PLC and
mosquitto, printed once through a pipe and shown live in a real 80x24 terminal (tmux)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.tables import Table
from gateway.status.watch import View, screen
from simulators.modbus import ModbusSimulator
from tests.brokers import Broker, eventually, free_port
from tests.e2e import running
from tests.status_helpers import serving, status_site

COMMAND = [sys.executable, "-m", "gateway.cli", "watch"]


async def run(*args: str) -> tuple[int, str, str]:
    """The command as its own process, without blocking the gateway that runs in this event loop."""
    process = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_watch_once_prints_the_filtered_values_with_unit_quality_source_time_and_age(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator) -> None:
    config = status_site(tmp_path, broker.port, plc.port, free_port())
    async with running(config) as gateway:
        await serving(gateway)

        async def printed() -> str:
            code, out, err = await run(*COMMAND, str(config), "--once", "--indicator", "pressure")
            assert code == 0, err
            return out

        async def shows_the_value() -> bool:
            return "412 kPa" in await printed()

        await eventually(shows_the_value, "the first poll's value in watch")
        lines = (await printed()).splitlines()
    assert lines[0].startswith("test-gw ") and "uplink connected" in lines[0]
    assert "devices 1 online" in lines[1]
    assert lines[2].split() == ["ASSET", "INDICATOR", "VALUE", "UNIT", "QUAL", "SOURCE", "AGE"]
    rows = lines[3:]
    assert len(rows) == 1 and rows[0].split()[:5] == ["ps01-station", "outlet-pressure", "412", "kPa", "good"]
    source_time, age = rows[0].split()[5:]
    assert len(source_time) == 8 and source_time.count(":") == 2 and age.endswith("s")
    assert all(len(line) <= 80 for line in lines)


async def test_watch_says_plainly_when_the_listener_is_off_or_nothing_answers(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator) -> None:
    off = status_site(tmp_path / "off", broker.port, plc.port, free_port(), enabled=False)
    code, _, err = await run(*COMMAND, str(off), "--once")
    assert code == 2 and "the status listener is off" in err and "status.enabled: true" in err
    silent = status_site(tmp_path / "silent", broker.port, plc.port, free_port())  # no gateway runs it
    code, _, err = await run(*COMMAND, str(silent), "--once")
    assert code == 1 and "is the gateway running?" in err and "Traceback" not in err


def test_one_screen_fits_80_by_24_and_scrolls() -> None:
    values = [{"asset": f"water-supply/ps01/pump-{i:02d}", "indicator": "discharge-pressure-with-a-long-name",
               "value": 1234.5678 + i, "unit": "kPa", "quality": "good", "reason": None, "source_ms": 1_000,
               "received_ms": 1_000, "device": f"plc-{i}", "point": "p"} for i in range(60)]
    snapshot: dict[str, Any] = {
        "gateway": "ps01-gw", "version": "0.1.0", "time_ms": 61_000, "clock": "synchronised",
        "uplink": {"connected": False}, "buffer": {"messages": 10, "oldest_ms": 0, "dropped_readings": 0},
        "devices": [{"state": "online"}] * 59 + [{"state": "failing"}], "alarms": [], "values": values}
    view = View()
    first = screen(snapshot, 80, 24, view)
    assert len(first) == 24 and all(len(line) <= 80 for line in first)
    assert "pump-00" in first[3] and "1234.57" in first[3] and first[3].rstrip().endswith("1m00s")
    assert first[-1].startswith("1-20 of 60")
    view.offset = 40
    last = screen(snapshot, 80, 24, view)
    assert "pump-40" in last[3] and "pump-59" in last[22] and last[-1].startswith("41-60 of 60")
    view.offset = 10**6  # past the end: the last page
    assert screen(snapshot, 80, 24, view)[3] == last[3]
    view.words = "pump-07"
    assert [line for line in screen(snapshot, 80, 24, view)[3:] if line.strip()][:-1] == [first[10]]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_the_live_view_in_an_80_by_24_terminal_follows_the_value_and_filters(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator) -> None:
    config = status_site(tmp_path, broker.port, plc.port, free_port())
    server = ["tmux", "-L", f"watch-test-{free_port()}"]  # a tmux server of this test's own

    async def tmux(*args: str) -> str:
        code, out, err = await run(*server, *args)
        assert code == 0, err
        return out

    async def screen_shows(text: str) -> bool:
        return text in await tmux("capture-pane", "-p", "-t", "watch")

    async with running(config) as gateway:
        await serving(gateway)
        command = " ".join([*COMMAND, str(config), "--refresh", "0.2"])
        await tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "watch", command)
        try:
            await eventually(lambda: screen_shows("412 kPa"), "412 kPa on the terminal")
            plc.set_registers(1, Table.HOLDING_REGISTER, 0, [250])
            await eventually(lambda: screen_shows("ALARM major low-outlet-pressure 250 kPa"), "the alarm")
            await tmux("send-keys", "-t", "watch", "/", "f", "l", "o", "w", "Enter")
            await eventually(lambda: screen_shows("[flow]"), "the filter applied")
            lines = (await tmux("capture-pane", "-p", "-t", "watch")).splitlines()
            assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
            assert any("ps01-station flow" in line for line in lines)
            assert not any("outlet-pressure" in line for line in lines)
            await tmux("send-keys", "-t", "watch", "q")
            await eventually(lambda: _ended(server), "watch to end on q")
        finally:
            await run(*server, "kill-server")


async def _ended(server: list[str]) -> bool:
    code, _, _ = await run(*server, "has-session", "-t", "watch")
    return code != 0
