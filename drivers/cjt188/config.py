"""Configuration of CJ/T 188 water and gas meters. Imports no vendor library.

A point names a `field` of the meter's 901F reply. Volumes are converted from
the unit the meter states in its unit byte (L, m³, m³×10, m³×100) to the point's
`unit` (by default m3), so a meter that changes its unit byte never changes the
meaning of a reading.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from drivers.cjt188.frames import DiOrder
from drivers.serial.config import BusOverTcp, OnBus, SerialDevice
from gateway.model.devices import PointBase
from gateway.model.schema import record


class Cjt188Field(enum.StrEnum):
    VOLUME = "volume"  # current cumulative flow
    SETTLEMENT_VOLUME = "settlement-volume"  # cumulative flow on the last settlement day
    VALVE_CLOSED = "valve-closed"  # true closed, false open; abnormal valve state → bad reading
    BATTERY_LOW = "battery-low"
    CLOCK_OFFSET = "clock-offset"  # seconds the meter's clock is ahead of the gateway's


DEFAULT_UNITS = {Cjt188Field.VOLUME: "m3", Cjt188Field.SETTLEMENT_VOLUME: "m3", Cjt188Field.VALVE_CLOSED: "state",
                 Cjt188Field.BATTERY_LOW: "state", Cjt188Field.CLOCK_OFFSET: "s"}

WILDCARD_ADDRESS = "A" * 14
# Heat (20H), cooling (21H) and heat + cooling (22H) meters answer 901F with energies, powers,
# temperatures and hours: a layout unlike the water and gas reply decoded here.
HEAT_METER_TYPES = range(0x20, 0x23)


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
                            description="Meter type in hex: 10 cold water, 11 hot water, 30 gas; AA any.")
    data_id_order: DiOrder = Field(DiOrder.LOW_FIRST, description="How the meter sends 901F: low-first as 1F 90.")
    wake_up: int = Field(2, ge=0, le=8, description="FE bytes sent before each request.")
    valve_mask: int = Field(0x0003, ge=0, le=0xFFFF, description="Bits of the status word holding the valve state.")
    valve_open: int = Field(0x0000, ge=0, le=0xFFFF)
    valve_closed: int = Field(0x0001, ge=0, le=0xFFFF, description="Any other valve value reads as abnormal.")
    battery_low_mask: int = Field(0x0004, ge=0, le=0xFFFF)
    points: list[Cjt188Point]

    @field_validator("meter_type")
    @classmethod
    def _not_a_heat_meter(cls, meter_type: str) -> str:
        if int(meter_type, 16) in HEAT_METER_TYPES:
            raise ValueError(f"meter type {meter_type.upper()} is a heat or cooling meter; heat meters are not "
                             "supported yet (their 901F reply differs from water and gas meters'); supported: "
                             "water meters 10-13 and gas meters 30")
        return meter_type

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
