"""Command-line behaviour that is not covered with a running gateway elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from drivers.registry import protocols
from gateway.cli import EXAMPLE_IDS

CONFIG = Path(__file__).parent.parent / "config"
CATALOGUE = Path(__file__).parent / "config_cases" / "common" / "catalogue.yaml"


def run(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"import sys\n{prelude}\nfrom gateway.cli import main\nsys.exit(main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"MQTT_PASSWORD": "unused", "PATH": "/usr/bin:/bin"})


def test_a_protocol_whose_library_is_missing_is_a_located_error_at_check() -> None:
    # As on a gateway installed without the OPC-UA extra: asyncua cannot be imported. `check` must find what
    # `run` would meet, with the place in the file and the fix.
    result = run("check", str(CONFIG / "opcua-example" / "gateway.yaml"), prelude="sys.modules['asyncua'] = None")
    assert result.returncode == 2, result.stderr
    assert "devices/" in result.stderr and ".protocol: protocol 'opcua' needs the Python package 'asyncua'" \
        in result.stderr
    assert "pip install 'municipal-gateway[opcua]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_warns_when_the_client_id_is_a_shipped_examples() -> None:
    shipped = {yaml.safe_load(f.read_text())["gateway"]["id"]
               for f in [*CONFIG.glob("*.yaml"), *CONFIG.glob("*-example/gateway.yaml"),
                         CONFIG.parent / "debian" / "gateway.yaml"] if f.name == "gateway.yaml"}
    assert shipped == EXAMPLE_IDS, "the list follows the examples"
    result = run("check", str(CONFIG / "serial-example" / "gateway.yaml"))
    assert "the MQTT client id 'gw-serial-example' is a shipped example's" in result.stderr, result.stderr


def test_schema_describes_every_protocol() -> None:
    result = run("schema", "--kind", "devices")
    assert result.returncode == 0, result.stderr
    text = json.dumps(json.loads(result.stdout))
    registered = set(protocols())
    assert {"modbus-tcp", "opcua", "cjt188", "dlt645"} <= registered
    for protocol in registered:
        assert f'"const": "{protocol}"' in text, protocol


def test_plan_prints_the_merged_requests_of_each_device() -> None:
    result = run("plan", str(CONFIG / "gateway.yaml"))
    assert result.returncode == 0, result.stderr
    assert "device ps01-plc-station" in result.stdout
    assert "holding_register 0-20 (21 registers, 14 points)" in result.stdout  # the setpoint at 20 bridged in


def test_plan_shows_requests_shared_by_the_devices_of_one_unit() -> None:
    result = run("plan", str(CONFIG / "gateway.yaml"))
    assert result.returncode == 0, result.stderr
    assert "coil 0-1 (2 bits, 1 point; shared with ps01-plc-pump-2)" in result.stdout


async def test_plan_shows_what_a_unit_taught_from_the_state_directory(tmp_path: Path) -> None:
    from drivers.modbus.tables import Table
    from drivers.modbus.tcp import ModbusTcpDriver
    from drivers.registry import make_driver
    from gateway.config.loader import load_config
    from gateway.model.driver import LinkContext
    from simulators.modbus import StrictGapSimulator

    sim = StrictGapSimulator({Table.HOLDING_REGISTER: [(0, 3), (10, 13)]})
    await sim.start()
    try:
        (tmp_path / "gateway.yaml").write_text(
            f"gateway: {{id: gw-1, state_dir: state}}\ncatalogue: {CATALOGUE}\ninclude: [devices.yaml]\n")
        points = ", ".join(f"{{name: p{a}, indicator: {indicator}, table: holding_register, address: {a}}}"
                           for a, indicator in ((0, "outlet-pressure"), (3, "flow"), (10, "pressure-margin")))
        (tmp_path / "devices.yaml").write_text(
            "devices:\n  - {id: plc, protocol: modbus-tcp, host: 127.0.0.1, port: " + str(sim.port)
            + ", asset: {domain: water-supply, site: ps01, id: ps01-station, type: water-pumping-station},"
            + f" points: [{points}]}}\n")
        config = load_config(tmp_path / "gateway.yaml")
        driver = make_driver([d.config for d in config.devices], LinkContext(state_dir=config.state_dir))
        assert isinstance(driver, ModbusTcpDriver)
        await driver.open()
        await driver.read(driver.devices[0])
        await driver.close()
    finally:
        await sim.stop()
    result = run("plan", str(tmp_path / "gateway.yaml"))
    assert result.returncode == 0, result.stderr
    assert "device plc (3 points, 2 requests per poll)" in result.stdout
    assert "holding_register 0-3 (4 registers, 2 points)" in result.stdout
    assert "learned: holding_register 4-9 holds an address the unit refuses" in result.stdout


def test_output_piped_into_head_ends_quietly_for_every_command() -> None:
    for command in ("schema --kind devices", f"plan {CONFIG / 'gateway.yaml'}", "--help"):
        result = subprocess.run(f"{sys.executable} -m gateway {command} | head -c 20", shell=True, capture_output=True,
                                text=True, timeout=60, env={"MQTT_PASSWORD": "unused", "PATH": "/usr/bin:/bin"})
        assert len(result.stdout) == 20, command
        assert result.stderr == "", (command, result.stderr)


def test_read_prints_every_digit_with_unit_and_quality() -> None:
    from gateway.model.readings import AssetRef, Quality, Reading
    from gateway.readonce import format_table

    asset = AssetRef("water-supply", "dms03", "dms03-meter")

    def reading(point: str, value: float | None, quality: Quality = Quality.GOOD, reason: str | None = None
                ) -> Reading:
        return Reading(asset, "volume", value, "m3", "MTQ", quality, reason, 0, 0, "meter", point)

    table = format_table([reading("volume", 26234.55), reading("total", 2.025e7), reading("noisy", 2623455 * 0.01),
                          reading("gone", None, Quality.BAD, "timeout")])
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:]}
    assert rows["volume"][2:] == ["26234.55", "m3", "good"]
    assert rows["total"][2] == "20250000"
    assert rows["noisy"][2] == "26234.55"
    assert rows["gone"][2:] == ["-", "m3", "bad", "(timeout)"]
