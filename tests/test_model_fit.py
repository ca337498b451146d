"""The metadata model fits a site without forking: profiles a device trims, catalogue overlays, instances."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drivers.modbus.config import ModbusPoint, ModbusTcpDevice
from gateway.config.errors import ConfigError
from gateway.config.loader import load_catalogue, load_config
from gateway.mapping import DeviceMapper
from gateway.model.readings import Sample
from gateway.processing import Output, Processor
from gateway.processing.windows import WindowStats

CASES = Path(__file__).parent / "config_cases"
COMMON = CASES / "common"


def write_site(directory: Path, devices: list[dict[str, object]], **main: object) -> Path:
    (directory / "devices.yaml").write_text(yaml.safe_dump({"devices": devices}, allow_unicode=True))
    settings = {"gateway": {"id": "gw-1"}, "catalogue": str(COMMON / "catalogue.yaml"),
                "profiles": str(COMMON / "profiles"), "include": ["devices.yaml"], **main}
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(settings, allow_unicode=True))
    return path


T0 = 1_700_000_040_000  # a whole minute in UTC
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


PROFILE_WITH_ATTRIBUTES = """\
profile: station-rtu
protocols: [modbus-tcp]
defaults: {attribute_interval: 7200}
points:
  - {name: outlet_pressure, indicator: outlet-pressure, table: holding_register, address: 0, type: int16}
attributes:
  - {name: station_number, attribute: station-number, table: holding_register, address: 20}
  - {name: station_code, attribute: station-id, table: holding_register, address: 21, type: string, length: 4}
"""


def test_a_profile_declares_attributes_that_a_device_drops_overrides_and_extends(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "station-rtu.yaml").write_text(PROFILE_WITH_ATTRIBUTES)
    device = {"id": "rtu-1", "protocol": "modbus-tcp", "host": "127.0.0.1", "asset": STATION, "profile": "station-rtu"}
    config = load_config(write_site(tmp_path, [device], profiles="profiles"), environ={})
    (reader,) = config.attribute_sources
    assert [(name, a.id) for name, a in reader.attributes] == [("station_number", "station-number"),
                                                              ("station_code", "station-id")]
    assert reader.config.poll_interval == 7200, "the profile's defaults hold attribute_interval too"

    trimmed = {**device, "drop": ["station_number"],
               "attributes": [{"name": "station_code", "address": 30}]}
    (reader,) = load_config(write_site(tmp_path, [trimmed], profiles="profiles"), environ={}).attribute_sources
    ((name, attribute),) = reader.attributes
    (point,) = reader.config.points
    assert (name, attribute.id) == ("station_code", "station-id")
    assert isinstance(point, ModbusPoint) and (point.address, point.length) == (30, 4), "overridden key by key"

    misspelt = {**device, "attributes": [{"name": "station_cod", "address": 30}]}
    with pytest.raises(ConfigError) as error:
        load_config(write_site(tmp_path, [misspelt], profiles="profiles"), environ={})
    assert ("devices[0].attributes[0].name: attribute 'station_cod' overrides no attribute of profile "
            "'station-rtu'; expected one of: station_number, station_code (did you mean 'station_code'?)"
            in str(error.value))


OVERLAY = """\
name: city-water
version: "4"
indicators:
  - {id: chlorine-dose-rate, name: {en: Chlorine dose rate, zh: 投氯量}, kind: measurement, unit: L/h,
     range: [0, 200], quantified: instantaneous}
  - {id: flow, override: true, name: {en: Flow, zh: 流量}, kind: measurement, unit: m3/h, range: [0, 500],
     quantified: instantaneous}
"""


def overlay_site(directory: Path) -> Path:
    (directory / "city-water.yaml").write_text(OVERLAY)
    return write_site(directory, [{
        "id": "plc-1", "protocol": "modbus-tcp", "host": "127.0.0.1", "asset": STATION,
        "points": [{"name": "dose", "indicator": "chlorine-dose-rate", "table": "input_register", "address": 0},
                   {"name": "q", "indicator": "flow", "table": "input_register", "address": 1}]}],
        catalogue=[str(COMMON / "catalogue.yaml"), "city-water.yaml"])


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, in a process of its own (it sets up logging for the whole process)."""
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60)


def test_an_overlay_adds_indicators_and_overrides_one_that_says_so(tmp_path: Path) -> None:
    main = overlay_site(tmp_path)
    config = load_config(main, environ={})
    dose, flow = config.devices[0].points
    assert dose.indicator.source is not None and dose.indicator.source.name == "city-water"
    assert flow.valid_range == (0, 500), "the overlay's flow replaced the shipped one"
    assert [s.name for s in config.catalogue.sources] == ["catalogue", "city-water"]
    (note,) = config.notes
    assert str(note).startswith(f"{tmp_path}/city-water.yaml:6:6: indicators[1].id: indicator 'flow' overrides the "
                                "one of catalogue 'catalogue' version 1")
    checked = run_cli("check", str(main))
    assert checked.returncode == 0, checked.stderr
    out = checked.stdout
    assert "note: " in out and "indicator 'flow' overrides" in out and "(1 overlay)" in out


def test_the_catalogue_command_says_which_file_defined_each_indicator(tmp_path: Path) -> None:
    main = overlay_site(tmp_path)
    listing = run_cli("catalogue", str(main))
    assert listing.returncode == 0, listing.stderr
    listed = {line.split()[0]: line for line in listing.stdout.splitlines() if line.strip()}
    assert "city-water 4" in listed["chlorine-dose-rate"] and "L/h (E32)" in listed["chlorine-dose-rate"]
    assert "city-water 4" in listed["flow"] and "[0, 500]" in listed["flow"]
    assert "catalogue 1" in listed["outlet-pressure"]
    one = run_cli("catalogue", str(main), "--indicator", "chlorine-dose-rate")
    assert one.returncode == 0, one.stderr
    shown = one.stdout
    assert "投氯量" in shown and f"city-water 4 ({tmp_path}/city-water.yaml:4:5)" in shown
    unknown = run_cli("catalogue", str(main), "--indicator", "chlorine-dose-rat")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "did you mean 'chlorine-dose-rate'?" in unknown.stderr


def test_the_shipped_example_overlay_fits_the_shipped_catalogue() -> None:
    shipped = Path(__file__).parent.parent / "config"
    catalogue = load_catalogue(shipped / "catalogue.yaml", shipped / "overlays" / "example-water-utility.yaml")
    assert [(s.name, s.version) for s in catalogue.sources] == [("municipal-gateway", "2"),
                                                                ("example-water-utility", "1")]
    pressure = catalogue.indicator("service-pressure")
    assert pressure is not None and pressure.alarms is not None and pressure.alarms[0].limit == 160
    mode = catalogue.indicator("dosing-pump-mode")
    assert mode is not None and mode.states is not None and mode.source is not None


LEVELS = COMMON / "levels-overlay.yaml"


def level_site(directory: Path, points: list[dict[str, object]], derived: list[dict[str, object]] | None = None,
               ) -> Path:
    return write_site(directory, [{"id": "plc-1", "protocol": "modbus-tcp", "host": "127.0.0.1", "asset": STATION,
                                   "points": points, "derived": derived or []}],
                      catalogue=[str(COMMON / "catalogue.yaml"), str(LEVELS)])


def level_point(name: str, address: int, instance: str | None, **more: object) -> dict[str, object]:
    point: dict[str, object] = {"name": name, "indicator": "level", "table": "input_register", "address": address,
                                "scale": 0.01, **more}
    if instance is not None:
        point["instance"] = instance
    return point


def test_instances_keep_their_own_processing_and_feed_derived_indicators(tmp_path: Path) -> None:
    processing = {"windows": [60]}
    config = load_config(level_site(tmp_path, [level_point("reservoir", 0, "reservoir", processing=processing),
                                               level_point("wet_well", 1, "wet-well", processing=processing)],
                                    [{"indicator": "level-difference",
                                      "expression": "level[reservoir] - level[wet-well]"}]), environ={})
    now = [T0]
    processor = Processor(config.assets, supervision={"plc-1": None}, clock=lambda: now[0])
    mapper = DeviceMapper(config.devices[0])

    def poll(reservoir: int, wet_well: int) -> Output:
        return processor.process("plc-1", mapper.readings([Sample("reservoir", reservoir),
                                                          Sample("wet_well", wet_well)], now[0]))

    first = poll(320, 610)  # 3.2 m in the reservoir, 6.1 m in the wet well: only the wet well is high
    assert [(r.indicator, r.instance) for r in first.readings] == [
        ("level", "reservoir"), ("level", "wet-well"), ("level-difference", None)]
    assert first.readings[2].value == pytest.approx(-2.9)
    assert [(e.alarm, e.instance, e.event) for e in first.events] == [("level[wet-well]-high", "wet-well", "raised")]
    assert first.events[0].as_payload()["instance"] == "wet-well"
    now[0] += 30_000
    poll(340, 400)
    now[0] += 40_000  # past the end of the first minute: each instance closes its own window
    closed = poll(340, 400).statistics
    assert sorted((w.instance, w.maximum) for _, w in closed if isinstance(w, WindowStats)) == [
        ("reservoir", pytest.approx(3.4)), ("wet-well", pytest.approx(6.1))]
    assert {w.as_payload(1)["instance"] for _, w in closed} == {"reservoir", "wet-well"}


@pytest.mark.parametrize("name", ["wet/well", "wet+well", "wet#well", "Wet-Well", "wet well", "level[x]", "1st"])
def test_an_instance_name_that_does_not_fit_a_topic_is_refused_at_load(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(level_site(tmp_path, [level_point("a", 0, name)]), environ={})
    assert "devices[0].points[0].instance: an instance name goes into ids and payloads" in str(caught.value)
    assert f"found {name!r}" in str(caught.value)


def test_the_worked_example_site_loads_as_the_readme_describes_it() -> None:
    config = load_config(Path(__file__).parent.parent / "config" / "model-example" / "gateway.yaml", environ={})
    station, pump, dosing = config.devices
    names = [p.name for p in station.points]
    assert "flooding" not in names and "volume_total" not in names, "dropped from the profile"
    levels = {p.config.instance: p.name for p in station.points if p.indicator.id == "level"}
    assert levels == {"reservoir": "tank_level", "wet-well": "wet_well_level"}
    running = {p.config.instance: p.config.invert for p in pump.points if p.indicator.id == "pump-running"}
    assert running == {"status-word": False, "contactor": True}
    mode = next(p for p in dosing.points if p.name == "mode")
    assert mode.transform.states is not None and mode.transform.states.name(12) == (2, "flow-paced")
    assert mode.indicator.source is not None and mode.indicator.source.name == "example-water-utility"
    (derived,) = next(a for a in config.assets if a.ref.asset == "ps02-station").derived
    assert derived.inputs == {"level[reservoir]", "level[wet-well]"}
    (attributes,) = config.attribute_sources
    assert [a.id for _, a in attributes.attributes] == ["station-number", "station-id"]
    assert attributes.config.poll_interval == 21600


def test_a_configuration_pointed_elsewhere_takes_its_attribute_readers_along() -> None:
    config = load_config(Path(__file__).parent.parent / "config" / "model-example" / "gateway.yaml", environ={})
    moved = config.with_devices(lambda device: device.model_copy(update={"host": "127.0.0.1"}))
    (reader,) = moved.attribute_sources
    assert isinstance(reader.config, ModbusTcpDevice) and reader.config.host == "127.0.0.1"
    assert not config.with_devices(lambda device: None).attribute_sources


def test_a_state_alarm_of_a_multi_state_indicator_may_name_the_state(tmp_path: Path) -> None:
    alarm = {"alarms": [{"level": "state", "state": "manual", "message": "pump left in manual"}]}
    config = load_config(write_site(tmp_path, [{
        "id": "plc-1", "protocol": "modbus-tcp", "host": "127.0.0.1", "asset": STATION,
        "points": [{"name": "mode", "indicator": "pump-mode", "table": "holding_register", "address": 0,
                    "states": {7: "automatic", 5: "manual"}, "processing": alarm}]}]), environ={})
    processor = Processor(config.assets, supervision={"plc-1": None}, clock=lambda: T0)
    mapper = DeviceMapper(config.devices[0])
    assert not processor.process("plc-1", mapper.readings([Sample("mode", 7)], T0)).events
    (raised,) = processor.process("plc-1", mapper.readings([Sample("mode", 5)], T0)).events
    assert (raised.alarm, raised.event, raised.value) == ("pump-mode-state", "raised", 1)
    with pytest.raises(ConfigError) as caught:
        load_config(write_site(tmp_path, [{
            "id": "plc-1", "protocol": "modbus-tcp", "host": "127.0.0.1", "asset": STATION,
            "points": [{"name": "mode", "indicator": "pump-mode", "table": "holding_register", "address": 0,
                        "processing": {"alarms": [{"level": "state", "state": "manul"}]}}]}]), environ={})
    assert ("devices[0].points[0].processing: alarm state 'manul' is not a state of 'pump-mode'; expected one of: "
            "stopped, manual, automatic") in str(caught.value)


def test_the_schema_lets_editors_accept_attributes_as_the_loader_does() -> None:
    from gateway.config.schema import json_schema

    schema = json_schema("devices")
    device = schema["$defs"]["ModbusTcpDevice"]["properties"]
    assert device["attribute_interval"]["default"] == 3600
    attribute = schema["$defs"][device["attributes"]["items"]["$ref"].rsplit("/", 1)[-1]]
    assert "attribute" in attribute["required"] and "indicator" not in attribute["properties"]
    assert {"table", "address", "type", "length"} <= set(attribute["properties"])
