"""Broken configuration files, each checked for the exact file, line, column, key and message.

Each folder under config_cases/ holds a configuration (gateway.yaml and what it
includes) and expected.txt: fragments that must each appear in the error
output, `{dir}` standing for the folder. An empty expected.txt means valid.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.modbus.config import ModbusTcpDevice
from gateway.config.errors import ConfigError
from gateway.config.loader import load_config

CASES = Path(__file__).parent / "config_cases"
CASE_NAMES = sorted(p.name for p in CASES.iterdir() if (p / "expected.txt").exists())


def errors_of(case: Path) -> str:
    try:
        load_config(case / "gateway.yaml", environ={}, check_files=True)  # as `check` does
    except ConfigError as exc:
        return str(exc)
    return ""


@pytest.mark.parametrize("name", CASE_NAMES)
def test_error_names_file_line_key_and_what_was_expected(name: str) -> None:
    case = CASES / name
    expected = [line.replace("{dir}", str(case)) for line in (case / "expected.txt").read_text().splitlines()]
    output = errors_of(case)
    if not expected:
        assert output == ""
        return
    missing = [fragment for fragment in expected if fragment not in output]
    assert not missing, f"missing from the error output:\n{missing}\n--- output ---\n{output}"


def test_all_errors_are_reported_in_one_pass() -> None:
    output = errors_of(CASES / "wrong-type-in-device")
    assert len(output.splitlines()) == 3


def test_check_command_exits_2_without_traceback() -> None:
    case = CASES / "wrong-type-in-device"
    result = subprocess.run([sys.executable, "-m", "gateway", "check", str(case / "gateway.yaml")],
                            capture_output=True, text=True, env={**os.environ}, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{case}/devices.yaml:5:5: devices[0].port" in result.stderr
    assert "3 configuration problems found" in result.stderr


def test_check_command_exits_0_for_a_valid_file() -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", "check", str(CASES / "valid" / "gateway.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_profile_points_are_merged_with_device_overrides() -> None:
    config = load_config(CASES / "valid" / "gateway.yaml", environ={})
    (device,) = config.devices
    assert [p.name for p in device.points] == ["outlet_pressure", "pump_running", "flow"]
    assert isinstance(device.config, ModbusTcpDevice)
    assert device.config.word_order == "little", "profile defaults fill device keys the device does not set"


def test_password_comes_from_the_environment(tmp_path: Path) -> None:
    main = tmp_path / "gateway.yaml"
    main.write_text("gateway: {id: gw-1}\nmqtt: {password: '${SECRET_FOR_TEST}'}\n"
                    f"catalogue: {CASES / 'common' / 'catalogue.yaml'}\n")
    config = load_config(main, environ={"SECRET_FOR_TEST": "s3cret"})
    assert config.main.mqtt.password is not None
    assert config.main.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config.main.mqtt)


def test_a_secret_written_into_the_wrong_key_is_never_shown(tmp_path: Path) -> None:
    # A password expanded from the environment into a key that is not a secret's (here the port) fails
    # validation: the error names the variable, never its value.
    (tmp_path / "gateway.yaml").write_text(
        "gateway: {id: gw-1}\nmqtt:\n  port: ${MQTT_PASSWORD}\n  client_id: x${MQTT_PASSWORD}\n"
        f"catalogue: {CASES / 'common' / 'catalogue.yaml'}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "gateway.yaml", environ={"MQTT_PASSWORD": "hunter2-secret"})
    message = str(raised.value)
    assert "hunter2" not in message
    assert "mqtt.port: expected a valid integer" in message and "found the value of ${MQTT_PASSWORD} (not shown)" \
        in message


def test_check_as_root_also_asks_whether_the_service_user_can_read_a_file(tmp_path: Path) -> None:
    import pwd

    from gateway.model.files import SERVICE_USER, file_problem

    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pytest.skip(f"no {SERVICE_USER} user here (the package check creates it)")
    if os.geteuid() != 0:
        pytest.skip("only a check run as root reads as someone else than the gateway would")
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)  # root's alone
    problem = file_problem(secret, as_service=True)
    assert problem is not None and f"not readable by the service user {SERVICE_USER}" in problem
    assert file_problem(secret) is None, "a gateway started by hand as root reads it"
