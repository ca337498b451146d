"""Unit conversion and the mapping of samples onto readings of the shared model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.config import ModbusTcpDevice
from gateway.config.loader import load_catalogue
from gateway.mapping import DeviceMapper
from gateway.model import units
from gateway.model.devices import AssetSettings, PointBase
from gateway.model.readings import Quality, Sample
from gateway.model.resolved import ResolvedDevice, resolve_device, resolve_point

CATALOGUE = load_catalogue(Path(__file__).parent / "config_cases" / "common" / "catalogue.yaml")


@pytest.mark.parametrize(("value", "source", "target", "expected"), [
    (1.0, "bar", "kPa", 100.0),
    (0.4, "MPa", "kPa", 400.0),
    (10.0, "mH2O", "kPa", 98.0665),
    (1.0, "L/s", "m3/h", 3.6),
    (60.0, "L/min", "m3/h", 3.6),
    (1000.0, "L", "m3", 1.0),
    (0.0, "°C", "K", 273.15),
    (300.0, "K", "°C", 26.85),
    (1500.0, "Wh", "kWh", 1.5),
    (2.0, "MWh", "kWh", 2000.0),
    (2500.0, "W", "kW", 2.5),
    (100.0, "mA", "A", 0.1),
])
def test_conversions_between_units_of_one_quantity(value: float, source: str, target: str, expected: float) -> None:
    assert units.conversion(source, target).apply(value) == pytest.approx(expected)


def test_units_of_different_quantities_do_not_convert() -> None:
    with pytest.raises(units.UnitError, match="cannot convert"):
        units.conversion("kPa", "m3/h")
    with pytest.raises(units.UnitError, match="unknown unit"):
        units.conversion("psi-ish", "kPa")


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
       st.sampled_from(["Pa", "kPa", "MPa", "bar", "mbar", "mH2O"]),
       st.sampled_from(["Pa", "kPa", "MPa", "bar", "mbar", "mH2O"]))
def test_conversion_round_trips(value: float, a: str, b: str) -> None:
    there = units.conversion(a, b).apply(value)
    assert units.conversion(b, a).apply(there) == pytest.approx(value, rel=1e-9, abs=1e-9)


def device(points: list[dict[str, object]]) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate({
        "id": "plc-1", "protocol": "modbus-tcp", "host": "127.0.0.1",
        "asset": AssetSettings(domain="water-supply", site="ps01", id="ps01-station", type="water-pumping-station"),
        "points": points,
    })


def resolved(points: list[dict[str, object]]) -> ResolvedDevice[ModbusTcpDevice]:
    return resolve_device(device(points), CATALOGUE)


def test_scale_offset_and_unit_fold_into_one_linear_transform() -> None:
    point = PointBase(name="p", indicator="outlet-pressure", unit="bar", scale=0.01, offset=-1.0)
    indicator = CATALOGUE.indicator("outlet-pressure")
    assert indicator is not None
    transform = resolve_point(point, indicator).transform
    value, in_range = transform.convert(450)  # 4.50 bar - 1 bar = 3.5 bar = 350 kPa
    assert value == pytest.approx(350.0)
    assert in_range
    assert isinstance(value, float) and transform.invert(value) == pytest.approx(450)


def test_reading_outside_the_valid_range_is_bad_but_keeps_its_value() -> None:
    mapper = DeviceMapper(resolved([{"name": "p", "indicator": "outlet-pressure", "table": "holding_register",
                                   "address": 0, "unit": "bar", "range": [0, 16]}]))
    (reading,) = mapper.readings([Sample("p", 17.0)], receive_time_ms=1000)
    assert reading.quality is Quality.BAD and reading.reason == "out-of-range"
    assert reading.value == pytest.approx(1700.0)
    assert reading.source_time_ms == 1000, "without a device timestamp the receive time is the source time"
    assert mapper.out_of_range == 1


def test_catalogue_range_applies_when_the_point_has_none() -> None:
    mapper = DeviceMapper(resolved([{"name": "p", "indicator": "outlet-pressure", "table": "holding_register",
                                   "address": 0}]))
    (reading,) = mapper.readings([Sample("p", 2600)], receive_time_ms=1)
    assert reading.quality is Quality.BAD


def test_integers_stay_exact_without_a_transform_and_states_pass_through() -> None:
    mapper = DeviceMapper(resolved([
        {"name": "f", "indicator": "flow", "table": "holding_register", "address": 0, "type": "uint32"},
        {"name": "run", "indicator": "pump-running", "table": "coil", "address": 0},
    ]))
    flow, run = mapper.readings([Sample("f", 1234), Sample("run", True)], receive_time_ms=1)
    assert flow.value == 1234 and isinstance(flow.value, int)
    assert run.value is True and run.quality is Quality.GOOD


def test_non_finite_values_become_bad_readings_not_crashes() -> None:
    mapper = DeviceMapper(resolved([{"name": "f", "indicator": "flow", "table": "holding_register",
                                   "address": 0, "type": "float32"}]))
    (reading,) = mapper.readings([Sample("f", math.nan)], receive_time_ms=1)
    assert reading.value is None and reading.quality is Quality.BAD and reading.reason == "decode-error"


def test_a_failed_poll_gives_a_bad_reading_per_point() -> None:
    mapper = DeviceMapper(resolved([
        {"name": "p", "indicator": "outlet-pressure", "table": "holding_register", "address": 0},
        {"name": "f", "indicator": "flow", "table": "holding_register", "address": 1},
    ]))
    readings = mapper.failed("timeout", receive_time_ms=5)
    assert [(r.point, r.quality, r.reason) for r in readings] == [("p", Quality.BAD, "timeout"),
                                                                   ("f", Quality.BAD, "timeout")]


def test_an_inverted_boolean_publishes_the_opposite_of_what_the_device_says() -> None:
    mapper = DeviceMapper(resolved([
        {"name": "stopped", "indicator": "pump-running", "table": "discrete_input", "address": 0, "invert": True},
        {"name": "run", "indicator": "pump-running", "table": "coil", "address": 0},
    ]))
    inverted, plain = mapper.readings([Sample("stopped", True), Sample("run", True)], receive_time_ms=1)
    assert inverted.value is False and plain.value is True


def test_a_multi_state_code_is_published_with_its_state_name() -> None:
    mapper = DeviceMapper(resolved([{"name": "mode", "indicator": "pump-mode", "table": "holding_register",
                                     "address": 0}]))
    manual, unknown = mapper.readings([Sample("mode", 1), Sample("mode", 9)], receive_time_ms=1)
    assert (manual.value, manual.state, manual.quality) == (1, "manual", Quality.GOOD)
    assert manual.as_payload(1)["state"] == "manual"
    assert (unknown.value, unknown.state, unknown.quality, unknown.reason) == (9, None, Quality.BAD, "out-of-range")


def test_a_points_own_codes_map_onto_the_catalogues_states() -> None:
    mapper = DeviceMapper(resolved([{"name": "mode", "indicator": "pump-mode", "table": "holding_register",
                                     "address": 0, "states": {3: "automatic", 4: "manual", 0: "stopped"}}]))
    automatic, stopped, unnamed = mapper.readings([Sample("mode", 3), Sample("mode", 0), Sample("mode", 1)],
                                                  receive_time_ms=1)
    assert (automatic.value, automatic.state) == (2, "automatic"), "the catalogue's code, not the device's"
    assert (stopped.value, stopped.state) == (0, "stopped")
    assert (unnamed.value, unnamed.state, unnamed.quality, unnamed.reason) == (
        1, None, Quality.UNCERTAIN, "unknown-state"), "a code the point does not map is kept, but not named"
    assert "state" not in unnamed.as_payload(1)
