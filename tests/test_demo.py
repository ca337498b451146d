"""`municipal-gateway demo` as a user runs it: a subprocess, with mosquitto and with the embedded broker.

Both runs go at once (free ports and separate state directories let them), so the file takes one run's
time. Each must end cleanly with data from every asset of config/demo: the Modbus TCP stations, the
OPC-UA gas station (a simulator process) and the meters on the simulated RS-485 bus (a pseudo-terminal),
and leave none of its child processes behind.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from gateway.config.loader import load_config
from tests.brokers import mosquitto_available

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "config" / "demo" / "gateway.yaml"
RUN_SECONDS = 12
RUN_LIMIT = 60.0  # seconds a run may take in all before the test fails; one takes about RUN_SECONDS + 3
# `topic: 10 readings, seq 1..10[, 2 not good]`, as --plain prints each data message
DATA_LINE = re.compile(r"^(?P<topic>\S+/data): (?P<readings>\d+) readings, seq \d+\.\.\d+(, (?P<bad>\d+) not good)?$")


@dataclass
class DemoRun:
    process: subprocess.Popen[str]
    children: dict[int, tuple[float, str]] = field(default_factory=dict)  # pid -> (create time, command line)
    stdout: str = ""
    stderr: str = ""

    def note_children(self) -> None:
        try:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.children.setdefault(child.pid, (child.create_time(), " ".join(child.cmdline())))
        except psutil.Error:  # the demo, or a child, ended while we looked
            pass

    def left_behind(self) -> list[str]:
        """Children of the demo still running after it ended."""
        alive = []
        for pid, (created, command) in self.children.items():
            try:
                if psutil.Process(pid).create_time() == created:
                    alive.append(command)
            except psutil.NoSuchProcess:
                pass
        return alive


def demo_command() -> list[str]:
    script = Path(sys.executable).with_name("municipal-gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, DemoRun]]:
    options = {"embedded": ["--embedded-broker"]}
    if mosquitto_available():
        options["mosquitto"] = []
    started = {name: DemoRun(subprocess.Popen(
        [*demo_command(), "demo", "--seconds", str(RUN_SECONDS), "--plain", *extra], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)) for name, extra in options.items()}
    try:
        # Note the demos' child processes while they run, to check afterwards that none outlives its demo.
        deadline = time.monotonic() + RUN_LIMIT
        while any(run.process.poll() is None for run in started.values()) and time.monotonic() < deadline:
            for run in started.values():
                run.note_children()
            time.sleep(0.2)  # sampling the process table; there is no event to wait for
        for run in started.values():
            run.stdout, run.stderr = run.process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        yield started
    finally:
        for run in started.values():
            if run.process.poll() is None:
                run.process.kill()
                run.process.communicate()


def demo_data_topics() -> dict[str, str]:
    """Asset id -> the data topic of every asset in the demo configuration."""
    config = load_config(DEMO_CONFIG)
    prefix = config.main.mqtt.topic_prefix
    return {a.ref.asset: f"{prefix}/{a.ref.path()}/data" for a in config.assets}


def test_the_demo_configuration_has_every_kind_of_simulated_device() -> None:
    protocols = {device.config.protocol for device in load_config(DEMO_CONFIG).devices}
    assert {"modbus-tcp", "opcua", "modbus-rtu", "cjt188", "dlt645"} <= protocols


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_a_demo_run_delivers_every_asset_and_ends_cleanly(runs: dict[str, DemoRun], broker: str) -> None:
    if broker not in runs:
        pytest.skip("mosquitto is not installed")
    run = runs[broker]
    assert run.process.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    final = run.stdout.strip().splitlines()[-1]
    assert final.startswith("demo finished:") and final.endswith("complete"), final
    assert ("mosquitto" if broker == "mosquitto" else "amqtt (embedded)") in run.stdout.splitlines()[0]
    # The demo's command set the pumping station's setpoint, and the lighting circuit follows its schedule.
    assert re.search(r"^command demo-\d+-1: ps01-plc-station/pressure_setpoint = 450: done \(confirmed, read back "
                     r"450\)$", run.stdout, re.MULTILINE), run.stdout[-3000:]
    assert "/lighting/lc07-a:" in run.stdout

    # Every asset sent data with good readings in it (a device the gateway cannot reach sends only bad ones).
    good_from: set[str] = set()
    for line in run.stdout.splitlines():
        match = DATA_LINE.match(line)
        if match and int(match["readings"]) > int(match["bad"] or 0):
            good_from.add(match["topic"])
    expected = demo_data_topics()
    missing = {asset for asset, topic in expected.items() if topic not in good_from}
    assert not missing, f"no good readings from {sorted(missing)}\n{run.stdout[-3000:]}"

    commands = [command for _, command in run.children.values()]
    assert any("simulators.opcua" in command for command in commands), commands
    if broker == "mosquitto":
        assert any("mosquitto" in command for command in commands), commands
    assert run.left_behind() == []
