"""The metadata model fits a site without forking: profiles a device trims, catalogue overlays, instances."""

from __future__ import annotations

from pathlib import Path

import yaml

from drivers.modbus.config import ModbusPoint
from gateway.config.loader import load_config

CASES = Path(__file__).parent / "config_cases"
COMMON = CASES / "common"


def write_site(directory: Path, devices: list[dict[str, object]], **main: object) -> Path:
    (directory / "devices.yaml").write_text(yaml.safe_dump({"devices": devices}, allow_unicode=True))
    settings = {"gateway": {"id": "gw-1"}, "catalogue": str(COMMON / "catalogue.yaml"),
                "profiles": str(COMMON / "profiles"), "include": ["devices.yaml"], **main}
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(settings, allow_unicode=True))
    return path


STATION = {"domain": "water-supply", "site": "ps01", "id": "ps01-station", "type": "water-pumping-station"}


def test_a_device_drops_and_overrides_points_of_its_profile(tmp_path: Path) -> None:
    config = load_config(write_site(tmp_path, [{
        "id": "plc-1", "protocol": "modbus-tcp", "host": "127.0.0.1", "asset": STATION,
        "profile": "station-plc", "drop": ["pump_running"],
        "points": [{"name": "outlet_pressure", "address": 7, "type": "uint16", "scale": 0.1},
                   {"name": "flow", "indicator": "flow", "table": "input_register", "address": 3}]}]), environ={})
    (device,) = config.devices
    assert [p.name for p in device.points] == ["outlet_pressure", "flow"], "pump_running is dropped"
    pressure = device.points[0]
    assert isinstance(pressure.config, ModbusPoint)
    assert (pressure.config.address, pressure.config.scale) == (7, 0.1), "overridden key by key"
    assert pressure.config.unit == "bar", "what the override does not name stays the profile's"
