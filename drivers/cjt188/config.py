"""Configuration of CJ/T 188 water, gas and heat meters. Imports no vendor library.

A point names a `field` of the meter's 901F reply. Amounts are converted from
the unit the meter states in its unit byte (L, m³, m³×10, kWh, MWh, GJ, kW ...)
to the point's `unit` (by default the field's), so a meter that changes its unit
byte never changes the meaning of a reading. Heat meters (types 20H-22H) have
fields of their own (energy, power, flow, temperatures, working hours); water
and gas meters have the settlement-day volume.
"""

from __future__ import annotations

import enum
from typing import Any, Literal, Self

from pydantic import Field, model_validator

from drivers.cjt188.frames import HEAT_METER_TYPES, DiOrder
from drivers.serial.config import BusOverTcp, OnBus, SerialDevice
from gateway.model.devices import PointBase
from gateway.model.schema import record


class Cjt188Field(enum.StrEnum):
    VOLUME = "volume"  # current cumulative flow (volume)
    SETTLEMENT_VOLUME = "settlement-volume"  # water and gas: cumulative flow on the last settlement day
    VALVE_CLOSED = "valve-closed"  # true closed, false open; abnormal valve state → bad reading
    BATTERY_LOW = "battery-low"
    CLOCK_OFFSET = "clock-offset"  # seconds the meter's clock is ahead of the gateway's
    HEAT_ENERGY = "heat-energy"  # heat meters: current heat (cooling energy on a cooling meter)
    SETTLEMENT_HEAT_ENERGY = "settlement-heat-energy"  # heat on the last settlement day
    HEAT_POWER = "heat-power"
    FLOW = "flow"
    SUPPLY_TEMPERATURE = "supply-temperature"
    RETURN_TEMPERATURE = "return-temperature"
    WORKING_HOURS = "working-hours"  # cumulative hours the meter has worked


DEFAULT_UNITS = {Cjt188Field.VOLUME: "m3", Cjt188Field.SETTLEMENT_VOLUME: "m3", Cjt188Field.VALVE_CLOSED: "state",
                 Cjt188Field.BATTERY_LOW: "state", Cjt188Field.CLOCK_OFFSET: "s",
                 Cjt188Field.HEAT_ENERGY: "kWh", Cjt188Field.SETTLEMENT_HEAT_ENERGY: "kWh",
                 Cjt188Field.HEAT_POWER: "kW", Cjt188Field.FLOW: "m3/h", Cjt188Field.SUPPLY_TEMPERATURE: "°C",
                 Cjt188Field.RETURN_TEMPERATURE: "°C", Cjt188Field.WORKING_HOURS: "h"}
HEAT_FIELDS = frozenset({Cjt188Field.HEAT_ENERGY, Cjt188Field.SETTLEMENT_HEAT_ENERGY, Cjt188Field.HEAT_POWER,
                         Cjt188Field.FLOW, Cjt188Field.SUPPLY_TEMPERATURE, Cjt188Field.RETURN_TEMPERATURE,
                         Cjt188Field.WORKING_HOURS})
WATER_FIELDS = frozenset({Cjt188Field.SETTLEMENT_VOLUME})

WILDCARD_ADDRESS = "A" * 14
WILDCARD_TYPE = 0xAA


@record
class Cjt188Point(PointBase):
    field: Cjt188Field

    @model_validator(mode="before")
    @classmethod
    def _unit_of_field(cls, raw: Any) -> Any:
        # The driver converts to the point's unit, so the unit must be known here, not only in the catalogue.
        if isinstance(raw, dict) and raw.get("unit") is None and raw.get("field") in DEFAULT_UNITS:
            raw = {**raw, "unit": DEFAULT_UNITS[Cjt188Field(raw["field"])]}
        return raw


class Cjt188Meter(OnBus):
    """A CJ/T 188 meter, wherever its bus is: the settings both kinds of bus share."""

    address: str = Field(pattern=r"^([0-9]{14}|A{14})$",
                         description="14 digits as on the nameplate; AAAAAAAAAAAAAA for a lone meter on its bus.")
    meter_type: str = Field("10", pattern=r"^[0-9A-Fa-f]{2}$",
                            description="Meter type in hex: 10 cold water, 11 hot water, 20 heat, 21 cooling, "
                                        "22 heat and cooling, 30 gas; AA any.")
    data_id_order: DiOrder = Field(DiOrder.LOW_FIRST, description="How the meter sends 901F: low-first as 1F 90.")
    wake_up: int = Field(2, ge=0, le=8, description="FE bytes sent before each request.")
    valve_mask: int = Field(0x0003, ge=0, le=0xFFFF, description="Bits of the status word holding the valve state.")
    valve_open: int = Field(0x0000, ge=0, le=0xFFFF)
    valve_closed: int = Field(0x0001, ge=0, le=0xFFFF, description="Any other valve value reads as abnormal.")
    battery_low_mask: int = Field(0x0004, ge=0, le=0xFFFF)
    valve_open_command: int = Field(0x55, ge=0, le=0xFF, description="The valve-control (A017) byte that opens "
                                                                      "the valve; most meters 55H.")
    valve_close_command: int = Field(0x99, ge=0, le=0xFF, description="The valve-control byte that closes it; "
                                                                       "most meters 99H.")
    points: list[Cjt188Point]

    @model_validator(mode="after")
    def _fields_of_the_meter_type(self) -> Self:
        code = self.meter_type_code
        if code == WILDCARD_TYPE:
            return self  # any meter: the reply's type byte says which layout it is
        heat = code in HEAT_METER_TYPES
        wrong = [p.name for p in self.points if p.field in (WATER_FIELDS if heat else HEAT_FIELDS)]
        if wrong:
            kind = "a heat or cooling meter" if heat else "a water or gas meter"
            fields = sorted(f.value for f in Cjt188Field if f not in (WATER_FIELDS if heat else HEAT_FIELDS))
            raise ValueError(f"points {', '.join(wrong)} name fields that meter type {self.meter_type.upper()} "
                             f"({kind}) does not have; its fields: {', '.join(fields)}")
        return self

    @property
    def meter_type_code(self) -> int:
        return int(self.meter_type, 16)

    def bus_address(self) -> str | None:
        return f"CJ/T 188 address {self.address}"


class Cjt188Device(Cjt188Meter, SerialDevice):
    """A CJ/T 188 meter on a local serial port."""

    protocol: Literal["cjt188"]


class Cjt188OverTcpDevice(Cjt188Meter, BusOverTcp):
    """A CJ/T 188 meter on the RS-485 line of a serial device server (transparent TCP)."""

    protocol: Literal["cjt188-over-tcp"]
