"""What may be written to a point: the checks, and the point's transform inverted exactly."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from drivers.modbus.codec import decode_point, encode
from drivers.modbus.config import ModbusPoint
from gateway.model.catalogue import Indicator
from gateway.model.resolved import resolve_point
from gateway.model.writes import Refused, WritePolicy, write_policy

PRESSURE = Indicator.model_validate({"id": "pressure-setpoint", "name": {"en": "p", "zh": "p"}, "kind": "measurement",
                                     "unit": "kPa", "range": [0, 2500], "quantified": "instantaneous"})
TEMPERATURE = Indicator.model_validate({"id": "t", "name": {"en": "t", "zh": "t"}, "kind": "measurement",
                                        "unit": "°C", "quantified": "instantaneous"})
MODE = Indicator.model_validate({"id": "mode", "name": {"en": "m", "zh": "m"}, "kind": "state", "unit": "state",
                                 "quantified": "state"})


def policy(indicator: Indicator, **point: Any) -> WritePolicy:
    raw = {"name": "p", "indicator": indicator.id, "table": "holding_register", "address": 0, "writable": True,
           **point}
    made = write_policy(resolve_point(TypeAdapter(ModbusPoint).validate_python(raw), indicator))
    assert made is not None
    return made


def test_a_setpoint_in_hundredths_of_a_bar_inverts_exactly() -> None:
    setpoint = policy(PRESSURE, type="int16", unit="bar", scale=0.01, write={"range": [2.0, 6.0], "step": 0.05})
    assert (setpoint.low, setpoint.high, setpoint.step) == (200.0, 600.0, 5.0)
    assert setpoint.raw(setpoint.check(455.0)) == 455 and isinstance(setpoint.raw(455.0), int)
    for value, reason in ((452.0, "not-on-step"), (650.0, "out-of-range"), ("455", "wrong-type"),
                          (True, "wrong-type"), (float("nan"), "wrong-type")):
        with pytest.raises(Refused) as refused:
            setpoint.check(value)
        assert refused.value.reason == reason


def test_offset_and_unit_conversion_are_inverted_as_reading_applies_them() -> None:
    # A transmitter reading 4-20 mA scaled as raw * 0.1 - 40 in °C: 21.5 °C is raw 615.
    temperature = policy(TEMPERATURE, type="int16", scale=0.1, offset=-40, write={"range": [0, 50]})
    assert temperature.raw(21.5) == 615
    # MPa with 0.001 scale: 0.455 MPa = 455 kPa is raw 455.
    mpa = policy(PRESSURE, type="uint16", unit="MPa", scale=0.001, write={"range": [0.2, 0.6]})
    assert (mpa.low, mpa.high) == pytest.approx((200.0, 600.0))
    assert mpa.raw(455.0) == 455
    # Not a whole number of counts: handed on as it is, and the integer register refuses it (never rounded).
    assert mpa.raw(455.5) == pytest.approx(455.5)


@given(st.integers(min_value=0, max_value=4000))
def test_every_step_of_a_scaled_register_round_trips_through_the_codec(counts: int) -> None:
    setpoint = policy(PRESSURE, type="uint16", unit="bar", scale=0.005, write={"range": [0, 20], "step": 0.005})
    canonical = counts * 0.5  # kPa: 0.005 bar a count
    raw = setpoint.raw(setpoint.check(canonical))
    assert raw == counts
    point = setpoint.point.config
    assert isinstance(point, ModbusPoint)
    back, _ = setpoint.point.transform.convert(decode_point(point, encode(point, raw)))
    assert setpoint.confirms(canonical, back)


def test_states_take_their_allowed_values_and_coils_true_or_false() -> None:
    mode = policy(MODE, type="uint16", write={"allowed": [0, 1, 2]})
    assert mode.check(2) == 2
    for value in (3, True, "auto", 1.5):
        with pytest.raises(Refused) as refused:
            mode.check(value)
        assert refused.value.reason == "not-allowed"
    coil = policy(MODE, table="coil")
    assert coil.check(True) is True and coil.check(0) is False
    with pytest.raises(Refused, match="true or false"):
        coil.check(2)
    assert coil.confirms(True, True) and not coil.confirms(True, False) and not coil.confirms(True, None)


def test_an_inverted_contact_and_a_mapped_mode_are_written_as_the_device_means_them() -> None:
    # A contact wired normally closed reads true for "off": written, true goes to the device as false.
    contact = policy(MODE, table="coil", invert=True)
    assert contact.raw(True) is False and contact.raw(False) is True
    dosing = Indicator.model_validate({
        "id": "dosing-mode", "name": {"en": "d", "zh": "d"}, "kind": "state", "unit": "state", "quantified": "state",
        "states": [{"code": 0, "id": "off", "name": {"en": "off", "zh": "off"}},
                   {"code": 1, "id": "auto", "name": {"en": "auto", "zh": "auto"}}]})
    mode = policy(dosing, type="uint16", states={7: "off", 9: "auto"}, write={"allowed": [0, 1]})
    assert mode.raw(1) == 9 and mode.raw(0) == 7  # the catalogue's code in, the device's code out


def test_a_guard_refuses_on_missing_bad_stale_or_false_inputs() -> None:
    from gateway.model.readings import AssetRef, Quality, Reading

    guarded = policy(MODE, table="coil", write={"guard": "wet-well-level >= 1.2", "guard_max_age": 10})

    def level(value: float, quality: Quality = Quality.GOOD, age_ms: int = 0) -> dict[str, Reading]:
        return {"wet-well-level": Reading(AssetRef("a", "b", "c"), "wet-well-level", value, "m", "MTR", quality,
                                          None, 1_000_000 - age_ms, 1_000_000 - age_ms, "d", "p")}

    guarded.check_guard(level(1.5), 1_000_000)
    for latest, why in (({}, "no reading"), (level(1.5, Quality.BAD), "bad"), (level(1.5, age_ms=11_000), "stale"),
                        (level(0.9), "does not hold")):
        with pytest.raises(Refused, match=why) as refused:
            guarded.check_guard(latest, 1_000_000)
        assert refused.value.reason == "guard"


def test_a_point_that_is_not_writable_has_no_policy() -> None:
    point = TypeAdapter(ModbusPoint).validate_python({"name": "p", "indicator": "pressure-setpoint",
                                                      "table": "holding_register", "address": 0})
    assert write_policy(resolve_point(point, PRESSURE)) is None
