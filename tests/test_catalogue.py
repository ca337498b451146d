"""The shipped vocabulary and example configuration hold together.

The catalogue, the device profiles and the example configurations are data that
others build on (the city platform, integrators copying a profile, the demo), so
these tests check them as a whole: every reference resolves, every unit converts,
register maps do not overlap by accident, and both example configurations load
through the real configuration loader.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter

from drivers.modbus.config import ModbusPoint, ModbusTcpDevice
from drivers.modbus.tables import DataType, Table
from drivers.registry import protocols
from gateway.config.errors import ConfigError
from gateway.config.loader import GatewayConfig, load_catalogue, load_config
from gateway.model import units
from gateway.model.catalogue import Catalogue, IndicatorKind, Quantification

CONFIG = Path(__file__).resolve().parent.parent / "config"
PROFILES = sorted((CONFIG / "profiles").glob("*.yaml"))
ENVIRON = {"MQTT_PASSWORD": "not-a-real-password"}
CJK = re.compile(r"[\u4e00-\u9fff]")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.model_validate(_yaml(CONFIG / "catalogue.yaml"))


@pytest.fixture(scope="module")
def production() -> GatewayConfig:
    return load_config(CONFIG / "gateway.yaml", environ=ENVIRON)


@pytest.fixture(scope="module")
def demo() -> GatewayConfig:
    return load_config(CONFIG / "demo" / "gateway.yaml", environ={})


def _modbus_devices(config: GatewayConfig) -> list[ModbusTcpDevice]:
    """The Modbus TCP devices (the production example has only those; the demo adds OPC-UA and serial)."""
    return [d.config for d in config.devices if isinstance(d.config, ModbusTcpDevice)]


def _profile_device(profile: Mapping[str, Any]) -> ModbusTcpDevice:
    """The profile as a device would use it unchanged: its defaults and points around a minimal device."""
    device = {
        "id": "profile-under-test",
        "protocol": "modbus-tcp",
        "host": "127.0.0.1",
        "asset": {"domain": "water-supply", "site": "test", "id": "test", "type": "pump"},
        **(profile.get("defaults") or {}),
        "points": profile["points"],
    }
    return ModbusTcpDevice.model_validate(device)


def overlaps(points: Iterable[ModbusPoint]) -> list[str]:
    """Pairs of points that read the same bit or register, except bits of one status register.

    Several `type: bit` points may share a register as long as each reads its own bit;
    anything else sharing an address is almost certainly a copy-and-paste mistake.
    """
    problems: list[str] = []
    claimed: dict[tuple[Table, int], list[ModbusPoint]] = {}
    for point in points:
        for address in range(point.address, point.address + point.register_count):
            for other in claimed.get((point.table, address), []):
                both_bits = point.data_type is DataType.BIT and other.data_type is DataType.BIT
                if not both_bits or point.bit == other.bit:
                    problems.append(f"{other.name} and {point.name} both read {point.table} {address}")
            claimed.setdefault((point.table, address), []).append(point)
    return problems


# -- the catalogue ------------------------------------------------------------------------------------------

def test_catalogue_validates_and_covers_the_required_vocabulary(catalogue: Catalogue) -> None:
    domains = {d.id for d in catalogue.domains}
    assert {"water-supply", "drainage", "gas", "street-lighting", "power-energy", "environment"} <= domains
    asset_types = {t.id for t in catalogue.asset_types}
    assert {"water-pumping-station", "district-metering-station", "gas-regulating-station", "lighting-cabinet",
            "energy-meter", "water-meter", "gas-meter", "heat-meter"} <= asset_types
    indicators = {i.id for i in catalogue.indicators}
    field_points = {
        "suction-pressure", "discharge-pressure", "inlet-pressure", "outlet-pressure", "service-pressure",
        "flow", "volume", "level", "pump-running", "pump-fault", "vfd-frequency", "motor-current",
        "motor-power", "motor-energy", "motor-temperature", "turbidity", "free-chlorine", "ph",
        "valve-position", "prv-upstream-pressure", "prv-downstream-pressure", "minimum-night-flow",
        "battery-level", "signal-quality", "gas-temperature", "gas-line-flow", "gas-standard-flow",
        "gas-standard-volume", "filter-differential-pressure", "slam-shut-valve-closed", "relief-valve-open",
        "door-open", "intrusion", "methane-lel", "voltage-l1", "voltage-l2", "voltage-l3", "current-l1",
        "active-power", "reactive-power", "power-factor", "thd-voltage-l1", "frequency",
        "active-energy-import", "active-energy-export", "reactive-energy-import", "contactor-closed",
        "working-mode", "dimming-level", "residual-current", "cabinet-temperature", "cabinet-humidity",
        "flooding", "lamp-fault-count",
    }
    assert field_points - indicators == set()


def test_every_asset_type_lists_existing_indicators_once(catalogue: Catalogue) -> None:
    for asset_type in catalogue.asset_types:
        assert asset_type.indicators, f"asset type {asset_type.id} lists no indicators"
        missing = [i for i in asset_type.indicators if catalogue.indicator(i) is None]
        assert missing == [], f"asset type {asset_type.id} lists unknown indicators {missing}"
        assert len(set(asset_type.indicators)) == len(asset_type.indicators), f"{asset_type.id} repeats one"


def test_every_indicator_belongs_to_some_asset_type(catalogue: Catalogue) -> None:
    listed = {i for t in catalogue.asset_types for i in t.indicators}
    assert [i.id for i in catalogue.indicators if i.id not in listed] == []


def test_a_catalogue_naming_an_unknown_indicator_is_rejected() -> None:
    raw = _yaml(CONFIG / "catalogue.yaml")
    raw["asset_types"][0]["indicators"].append("suction-presure")
    with pytest.raises(ValueError, match="suction-presure"):
        Catalogue.model_validate(raw)


def test_every_indicator_has_a_known_canonical_unit_and_a_sensible_definition(catalogue: Catalogue) -> None:
    for indicator in catalogue.indicators:
        assert units.is_known(indicator.unit), indicator.id
        assert indicator.unit == units.lookup(indicator.unit).symbol, f"{indicator.id}: use the canonical symbol"
        assert indicator.name.en.strip() and CJK.search(indicator.name.zh), f"{indicator.id}: names en and zh"
        assert indicator.description.strip(), f"{indicator.id} has no description"
        expected_quantification = {
            IndicatorKind.COUNTER: {Quantification.CUMULATIVE},
            IndicatorKind.ALARM: {Quantification.EVENT},
            IndicatorKind.STATE: {Quantification.STATE},
            IndicatorKind.MEASUREMENT: {Quantification.INSTANTANEOUS, Quantification.MEAN},
        }[indicator.kind]
        assert indicator.quantified in expected_quantification, indicator.id
        if indicator.kind is IndicatorKind.MEASUREMENT or indicator.kind is IndicatorKind.COUNTER:
            assert indicator.range is not None, f"{indicator.id}: numeric indicators need a valid range"
        if indicator.kind is IndicatorKind.COUNTER:
            assert indicator.range is not None and indicator.range[0] == 0, f"{indicator.id}: totalisers start at 0"


def test_domain_and_asset_type_names_are_bilingual(catalogue: Catalogue) -> None:
    names = [(d.id, d.name) for d in catalogue.domains] + [(t.id, t.name) for t in catalogue.asset_types]
    for entry_id, name in names:
        assert name.en.strip() and CJK.search(name.zh), entry_id


def test_all_pressures_share_one_unit_so_water_and_gas_compare(catalogue: Catalogue) -> None:
    pressure_units = {i.unit for i in catalogue.indicators if units.lookup(i.unit).quantity == "pressure"}
    assert pressure_units == {"kPa"}


def test_per_phase_indicators_come_in_complete_consistent_sets(catalogue: Catalogue) -> None:
    by_id = {i.id: i for i in catalogue.indicators}
    phase_to_neutral = [m.group(1) for i in by_id if (m := re.fullmatch(r"(.+?)-l1", i)) and not
                        re.search(r"-l[123]$", m.group(1))]
    phase_to_phase = [m.group(1) for i in by_id if (m := re.fullmatch(r"(.+?)-l1-l2", i))]
    assert "voltage" in phase_to_neutral and "voltage" in phase_to_phase
    sets = [[f"{stem}-l1", f"{stem}-l2", f"{stem}-l3"] for stem in phase_to_neutral]
    sets += [[f"{stem}-l1-l2", f"{stem}-l2-l3", f"{stem}-l3-l1"] for stem in phase_to_phase]
    for ids in sets:
        phases = [by_id.get(i) for i in ids]
        assert all(phases), f"expected all of {ids}"
        assert len({(p.unit, p.kind, p.range) for p in phases if p}) == 1, f"{ids}: phases differ"


# -- more of the city: flood control, weather, municipal facilities, the field trial's missing points -------

NEW_DOMAINS = {"flood-control", "weather", "municipal-facilities"}
NEW_ASSET_TYPES = {
    "rain-gauge": "flood-control", "waterlogging-monitoring-point": "flood-control",
    "river-level-station": "flood-control", "flood-gate": "flood-control", "flood-pumping-station": "flood-control",
    "weather-station": "weather", "manhole-cover": "municipal-facilities",
}
# id: (kind, canonical unit, UN/CEFACT code of that unit, how it is quantified)
NEW_INDICATORS: dict[str, tuple[str, str, str, str]] = {
    # flood control
    "rainfall-intensity": ("measurement", "mm/h", "H67", "mean"),
    "rainfall": ("counter", "mm", "MMT", "cumulative"),
    "waterlogging-depth": ("measurement", "m", "MTR", "instantaneous"),
    "river-level": ("measurement", "m", "MTR", "instantaneous"),
    "gate-position": ("measurement", "%", "P1", "instantaneous"),
    "gate-fully-open": ("state", "state", "C62STATE", "state"),
    "gate-fully-closed": ("state", "state", "C62STATE", "state"),
    # weather
    "wind-speed": ("measurement", "m/s", "MTS", "mean"),
    "wind-direction": ("measurement", "°", "DD", "mean"),
    "air-pressure": ("measurement", "kPa", "KPA", "instantaneous"),
    "solar-radiation": ("measurement", "W/m2", "D54", "instantaneous"),
    # municipal facilities
    "manhole-cover-open": ("alarm", "state", "C62STATE", "event"),
    "manhole-cover-tilt": ("measurement", "°", "DD", "instantaneous"),
    "manhole-depth-to-water": ("measurement", "m", "MTR", "instantaneous"),
    # points the field trial found without an indicator
    "pressure-setpoint": ("measurement", "kPa", "KPA", "instantaneous"),
    "level-setpoint": ("measurement", "m", "MTR", "instantaneous"),
    "flow-setpoint": ("measurement", "m3/h", "MQH", "instantaneous"),
    "pump-speed": ("measurement", "r/min", "RPM", "instantaneous"),
    "pump-relative-speed": ("measurement", "%", "P1", "instantaneous"),
    "alarm-code": ("alarm", "state", "C62STATE", "event"),
    "level-switch-high": ("state", "state", "C62STATE", "state"),
    "level-switch-low": ("state", "state", "C62STATE", "state"),
    "pressure-switch-high": ("state", "state", "C62STATE", "state"),
    "pressure-switch-low": ("state", "state", "C62STATE", "state"),
    "volume-settlement-day": ("counter", "m3", "MTQ", "cumulative"),
    "gas-line-volume-settlement-day": ("counter", "m3", "MTQ", "cumulative"),
    "active-energy-combined": ("counter", "kWh", "KWH", "cumulative"),
    "clock-offset": ("measurement", "s", "SEC", "instantaneous"),
}


@pytest.fixture(scope="module")
def shipped() -> Catalogue:
    """The shipped catalogue as the gateway loads it (located errors, not a bare validation)."""
    return load_catalogue(CONFIG / "catalogue.yaml")


def test_shipped_catalogue_loads_through_the_loader_as_version_2(shipped: Catalogue) -> None:
    assert shipped.version == "2"
    assert {d.id for d in shipped.domains} >= NEW_DOMAINS | {"water-supply", "drainage", "environment"}


def test_new_domains_and_asset_types_are_present_with_both_names(shipped: Catalogue) -> None:
    domains = {d.id: d for d in shipped.domains}
    for domain_id in NEW_DOMAINS:
        assert domain_id in domains, domain_id
        assert domains[domain_id].name.en.strip() and CJK.search(domains[domain_id].name.zh), domain_id
    for type_id, domain_id in NEW_ASSET_TYPES.items():
        asset_type = shipped.asset_type(type_id)
        assert asset_type is not None, type_id
        assert asset_type.domain == domain_id, type_id
        assert asset_type.name.en.strip() and CJK.search(asset_type.name.zh), type_id


@pytest.mark.parametrize("indicator_id", sorted(NEW_INDICATORS))
def test_new_indicator_is_defined_as_the_model_asks(indicator_id: str, shipped: Catalogue) -> None:
    indicator = shipped.indicator(indicator_id)
    assert indicator is not None, f"{indicator_id} is missing"
    kind, unit, code, quantified = NEW_INDICATORS[indicator_id]
    assert (indicator.kind.value, indicator.unit, indicator.unit_code, indicator.quantified.value) == (
        kind, unit, code, quantified)
    assert indicator.name.en.strip() and CJK.search(indicator.name.zh)
    assert indicator.description.strip()
    assert (indicator.range is None) == (unit == "state" and indicator_id != "alarm-code"), "booleans have no range"


def test_new_asset_types_list_what_such_an_asset_has(shipped: Catalogue) -> None:
    def lists(type_id: str) -> set[str]:
        asset_type = shipped.asset_type(type_id)
        assert asset_type is not None, type_id
        return set(asset_type.indicators)

    assert {"rainfall-intensity", "rainfall"} <= lists("rain-gauge")
    assert "waterlogging-depth" in lists("waterlogging-monitoring-point")
    assert "river-level" in lists("river-level-station")
    assert {"gate-position", "gate-fully-open", "gate-fully-closed"} <= lists("flood-gate")
    assert {"level", "river-level", "level-setpoint"} <= lists("flood-pumping-station")
    assert {"air-temperature", "relative-humidity", "air-pressure", "wind-speed", "wind-direction",
            "rainfall-intensity", "rainfall", "solar-radiation"} <= lists("weather-station")
    assert {"manhole-cover-open", "manhole-cover-tilt", "manhole-depth-to-water"} <= lists("manhole-cover")
    # the field trial's points, on the asset types whose devices had them
    assert {"pressure-setpoint", "level-setpoint", "flow-setpoint", "level-switch-high", "level-switch-low",
            "pressure-switch-high", "pressure-switch-low", "alarm-code"} <= lists("water-pumping-station")
    assert {"pump-speed", "pump-relative-speed", "alarm-code"} <= lists("pump")
    assert {"volume-settlement-day", "clock-offset"} <= lists("water-meter")
    assert {"gas-line-volume-settlement-day", "clock-offset"} <= lists("gas-meter")
    assert {"active-energy-combined", "clock-offset"} <= lists("energy-meter")


def test_new_indicators_carry_the_processing_their_use_needs(shipped: Catalogue) -> None:
    rainfall = shipped.indicator("rainfall")
    assert rainfall is not None and rainfall.windows == [3600, 86400]  # rain per hour and per (UTC) day
    waterlogging = shipped.indicator("waterlogging-depth")
    assert waterlogging is not None and waterlogging.alarms is not None
    assert [(a.level.value, a.limit) for a in waterlogging.alarms] == [("high", 0.15)]  # GB 51222-2017
    cover = shipped.indicator("manhole-cover-open")
    assert cover is not None and cover.alarms is not None and cover.alarms[0].alarm_state is True
    wind_direction = shipped.indicator("wind-direction")
    assert wind_direction is not None and not wind_direction.windows, "an arithmetic mean of angles is wrong at north"


@pytest.mark.parametrize(("value", "source", "target", "expected"), [
    (1013.25, "hPa", "kPa", 101.325),
    (1013.25, "hPa", "mbar", 1013.25),
    (0.5, "mm/min", "mm/h", 30.0),
    (12.0, "mm/hr", "mm/h", 12.0),
    (36.0, "km/h", "m/s", 10.0),
    (10.0, "kn", "m/s", 5.144444),
    (180.0, "deg", "rad", math.pi),
    (90.0, "°", "°", 90.0),
    (850.0, "W/m²", "W/m2", 850.0),
    (65.0, "%RH", "%", 65.0),
    (27.0, "cm", "m", 0.27),
])
def test_new_units_convert_within_their_quantity(value: float, source: str, target: str, expected: float) -> None:
    assert units.conversion(source, target).apply(value) == pytest.approx(expected)


@pytest.mark.parametrize(("source", "target"), [("m/s", "mm/h"), ("mm", "mm/h"), ("%", "°"), ("W", "W/m2"),
                                                ("hPa", "mm")])
def test_new_units_do_not_convert_across_quantities(source: str, target: str) -> None:
    with pytest.raises(units.UnitError, match="cannot convert"):
        units.conversion(source, target)


def test_new_units_carry_their_recommendation_20_codes() -> None:
    expected = {"hPa": "A97", "km/h": "KMH", "kn": "KNT", "mm/h": "H67", "mm/min": "H81", "rad": "C81",
                "°": "DD", "W/m2": "D54"}
    assert {symbol: units.lookup(symbol).code for symbol in expected} == expected
    codes = [u.code for u in units.UNITS.values()]
    assert sorted(c for c in codes if codes.count(c) > 1) == [], "a code must name one unit (OPC UA EUInformation)"


@pytest.mark.parametrize(("indicator_id", "device_units"), [
    ("air-pressure", ["hPa", "mbar", "Pa"]),
    ("rainfall-intensity", ["mm/min"]),
    ("rainfall", ["mm"]),
    ("waterlogging-depth", ["cm", "mm"]),
    ("wind-speed", ["km/h", "kn"]),
    ("wind-direction", ["deg"]),
    ("manhole-cover-tilt", ["deg"]),
    ("solar-radiation", ["W/m²"]),
    ("relative-humidity", ["%RH"]),
    ("pump-speed", ["rpm"]),
    ("pressure-setpoint", ["bar", "MPa"]),
    ("clock-offset", ["min"]),
])
def test_units_devices_report_convert_to_the_new_indicators(indicator_id: str, device_units: list[str],
                                                            shipped: Catalogue) -> None:
    indicator = shipped.indicator(indicator_id)
    assert indicator is not None
    for unit in device_units:
        units.conversion(unit, indicator.unit)  # raises when a device's usual unit would be refused


# What a value of each quantity can mean at all, in the quantity's base unit: no temperature below absolute
# zero, no gauge pressure below a full vacuum (an absolute one is never negative either), an angle within a
# turn either way, no negative number of things or rain.
PHYSICAL_BOUNDS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, math.inf),
    "pressure": (-101_325.0, math.inf),
    "angle": (-2 * math.pi, 2 * math.pi),
    "count": (0.0, math.inf),
    "precipitation-rate": (0.0, math.inf),
}


def test_every_range_lies_within_what_its_unit_can_mean(shipped: Catalogue) -> None:
    checked: set[str] = set()
    for indicator in shipped.indicators:
        if indicator.range is None:
            continue
        unit = units.lookup(indicator.unit)
        low, high = (v * unit.factor + unit.offset for v in indicator.range)
        if unit.quantity in PHYSICAL_BOUNDS:
            checked.add(unit.quantity)
            floor, ceiling = PHYSICAL_BOUNDS[unit.quantity]
            assert floor - 1e-9 <= low and high <= ceiling + 1e-9, f"{indicator.id}: {indicator.range} {unit.symbol}"
        if unit.quantity == "state":  # multi-state codes: whole numbers from 0
            assert low >= 0 and low == int(low) and high == int(high), indicator.id
    assert checked == set(PHYSICAL_BOUNDS), "every bound was used"
    air = shipped.indicator("air-pressure")
    assert air is not None and air.range is not None and air.range[0] > 0, "atmospheric pressure is absolute"


# -- device profiles ----------------------------------------------------------------------------------------

def test_profiles_are_shipped() -> None:
    assert {p.stem for p in PROFILES} >= {"eastron-sdm630", "example-pump-station-plc",
                                          "example-pump-station-plc-pump"}


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profile_header_names_itself_its_device_and_its_datasheet(path: Path) -> None:
    profile = _yaml(path)
    assert profile["profile"] == path.stem
    for key in ("manufacturer", "model", "datasheet"):
        assert str(profile.get(key, "")).strip(), f"{path.name}: {key} is required"
    fits = profile["protocols"] if "protocols" in profile else [profile["protocol"]]
    assert fits and set(fits) <= set(protocols()), f"{path.name}: the protocols it fits are required"


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profile_points_feed_catalogue_indicators_in_convertible_units(path: Path, catalogue: Catalogue) -> None:
    device = _profile_device(_yaml(path))
    for point in device.points:
        indicator = catalogue.indicator(point.indicator)
        assert indicator is not None, f"{path.name}: {point.name} names unknown indicator {point.indicator}"
        source_unit = point.unit or indicator.unit
        conversion = units.conversion(source_unit, indicator.unit)  # raises when the quantities differ
        if point.range is not None and indicator.range is not None:
            low, high = sorted(conversion.apply(v) for v in point.range)
            assert indicator.range[0] <= low and high <= indicator.range[1], (
                f"{path.name}: {point.name} range {point.range} {source_unit} exceeds {indicator.id}'s valid range")


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profile_points_do_not_overlap_and_only_writable_tables_are_writable(path: Path) -> None:
    device = _profile_device(_yaml(path))
    assert overlaps(device.points) == []
    assert len({p.name for p in device.points}) == len(device.points), f"{path.name}: duplicate point names"
    for point in device.points:
        if point.writable:
            assert point.table in (Table.COIL, Table.HOLDING_REGISTER), f"{path.name}: {point.name}"
        if point.table.is_bits or point.data_type is DataType.BIT:
            assert (point.scale, point.offset) == (1.0, 0.0), f"{path.name}: {point.name} is a bit; no scaling"


def test_overlap_check_finds_a_shared_register_but_allows_bits_of_one_word() -> None:
    def point(name: str, address: int, **keys: Any) -> ModbusPoint:
        return TypeAdapter(ModbusPoint).validate_python(
            {"name": name, "indicator": "flow", "table": "holding_register", "address": address, **keys})

    assert overlaps([point("a", 0, type="bit", bit=0), point("b", 0, type="bit", bit=1)]) == []
    assert overlaps([point("a", 4, type="uint32"), point("b", 5)]) == ["a and b both read holding_register 5"]
    assert overlaps([point("a", 0, type="bit", bit=3), point("b", 0, type="bit", bit=3)]) != []


def test_sdm630_map_matches_the_public_register_table() -> None:
    device = _profile_device(_yaml(CONFIG / "profiles" / "eastron-sdm630.yaml"))
    points = {p.indicator: p for p in device.points}
    expected = {"voltage-l1": 0x00, "voltage-l2": 0x02, "voltage-l3": 0x04, "current-l1": 0x06,
                "active-power-l1": 0x0C, "power-factor-l1": 0x1E, "active-power": 0x34, "frequency": 0x46,
                "active-energy-import": 0x48, "active-energy-export": 0x4A}
    assert {i: points[i].address for i in expected} == expected
    assert all(p.table is Table.INPUT_REGISTER and p.data_type is DataType.FLOAT32 for p in device.points)
    assert device.word_order.value == "big"


# -- the example configurations -----------------------------------------------------------------------------

@pytest.mark.parametrize("config_name", ["production", "demo"])
def test_example_configuration_loads_with_the_expected_devices(config_name: str,
                                                               request: pytest.FixtureRequest) -> None:
    config: GatewayConfig = request.getfixturevalue(config_name)
    modbus_tcp = {"ps01-plc-station", "ps01-plc-pump-1", "ps01-plc-pump-2", "lc07-energy-meter", "lc07-controller"}
    assert {d.id for d in _modbus_devices(config)} == modbus_tcp
    others = {"prs02-plc", "dms03-prv-controller", "dms03-inlet-meter", "dms03-supply-meter"}
    assert {d.id for d in config.devices} == (modbus_tcp | others if config_name == "demo" else modbus_tcp)
    assert len(config.catalogue.indicators) > 50
    for device in _modbus_devices(config):
        assert device.points, f"{device.id}: the profile's points were not applied"


@pytest.mark.parametrize("config_name", ["production", "demo"])
def test_example_devices_feed_only_indicators_of_their_asset_type(config_name: str,
                                                                  request: pytest.FixtureRequest) -> None:
    config: GatewayConfig = request.getfixturevalue(config_name)
    for device in (d.config for d in config.devices):
        asset_type = config.catalogue.asset_type(device.asset.type)
        assert asset_type is not None
        assert asset_type.domain == device.asset.domain, device.id
        extra = [p.indicator for p in device.points if p.indicator not in asset_type.indicators]
        assert extra == [], f"{device.id}: {asset_type.id} does not list {extra}"


@pytest.mark.parametrize("config_name", ["production", "demo"])
def test_devices_sharing_a_plc_never_read_the_same_address(config_name: str,
                                                           request: pytest.FixtureRequest) -> None:
    config: GatewayConfig = request.getfixturevalue(config_name)
    by_unit: dict[tuple[str, int, int], list[ModbusPoint]] = {}
    for device in _modbus_devices(config):
        by_unit.setdefault((device.host, device.port, device.unit_id), []).extend(device.points)
    for unit, points in by_unit.items():
        assert overlaps(points) == [], f"{unit}: pump blocks or station block overlap"


def test_demo_mirrors_production_with_local_simulators(production: GatewayConfig, demo: GatewayConfig) -> None:
    def shape(config: GatewayConfig) -> dict[str, Any]:
        return {d.id: (d.asset.model_dump(exclude={"name"}), d.protocol, d.unit_id,
                       sorted((p.name, p.indicator, p.table, p.address, p.data_type, p.bit) for p in d.points))
                for d in _modbus_devices(config)}

    assert shape(demo) == shape(production)
    assert demo.main.gateway.id == "demo-gateway"
    assert (demo.main.mqtt.host, demo.main.mqtt.port, demo.main.mqtt.tls) == ("127.0.0.1", 1883, None)
    ports = {d.id: (d.host, d.port, d.poll_interval) for d in _modbus_devices(demo)}
    assert ports == {"ps01-plc-station": ("127.0.0.1", 15020, 1), "ps01-plc-pump-1": ("127.0.0.1", 15020, 1),
                     "ps01-plc-pump-2": ("127.0.0.1", 15020, 1), "lc07-energy-meter": ("127.0.0.1", 15021, 1),
                     "lc07-controller": ("127.0.0.1", 15021, 1)}


def test_production_example_uses_tls_and_keeps_the_password_out_of_the_file(production: GatewayConfig) -> None:
    mqtt = production.main.mqtt
    assert mqtt.port == 8883 and mqtt.tls is not None and mqtt.tls.ca_file is not None
    assert mqtt.password is not None and mqtt.password.get_secret_value() == ENVIRON["MQTT_PASSWORD"]
    assert str(production.state_dir) == "/var/lib/municipal-gateway"
    with pytest.raises(ConfigError, match="MQTT_PASSWORD"):
        load_config(CONFIG / "gateway.yaml", environ={})


def test_only_the_declared_points_are_writable(production: GatewayConfig) -> None:
    writable = sorted((d.id, p.name, p.table.value, p.address)
                      for d in _modbus_devices(production) for p in d.points if p.writable)
    assert writable == [("lc07-controller", "contactor_a", "coil", 0),
                        ("lc07-controller", "dimming_a", "holding_register", 0),
                        ("ps01-plc-pump-1", "run_command", "coil", 0), ("ps01-plc-pump-2", "run_command", "coil", 1),
                        ("ps01-plc-station", "pressure_setpoint", "holding_register", 20)]
    numbers = [p for d in _modbus_devices(production) for p in d.points if p.writable and p.table.value != "coil"]
    assert all(p.write is not None and p.write.range is not None for p in numbers), "a number says what may be set"
