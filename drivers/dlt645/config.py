"""Configuration of DL/T 645-2007 electricity meters. Imports no vendor library.

A point names a 4-byte data identifier (e.g. 00010000 forward active energy).
The common identifiers bring their own BCD format and unit; a point's `unit`
then defaults to the identifier's, and another unit of the same quantity (Wh
for kWh) makes the meter convert the value to it. Any other identifier needs
`size` and `decimals` (and `signed`, `unit`) from the meter's documentation.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, PositiveInt, model_validator

from drivers.dlt645.frames import DataFormat, common_format
from drivers.serial.config import BusOverTcp, OnBus, SerialDevice
from gateway.model import units
from gateway.model.devices import PointBase
from gateway.model.schema import record

WILDCARD_ADDRESS = "A" * 12


@record
class Dlt645Point(PointBase):
    data_id: str = Field(pattern=r"^[0-9A-Fa-f]{8}$", description="DI3 DI2 DI1 DI0 in hex, e.g. 02010100.")
    size: PositiveInt | None = Field(None, le=16, description="Bytes of the value, for identifiers not built in.")
    decimals: int | None = Field(None, ge=0, le=8)
    signed: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _unit_of_identifier(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("unit") is None and isinstance(raw.get("data_id"), str):
            try:
                known = common_format(int(raw["data_id"], 16))
            except ValueError:
                return raw
            if known is not None:
                raw = {**raw, "unit": known.unit}
        return raw

    @model_validator(mode="after")
    def _format_known(self) -> Self:
        known = common_format(self.identifier)
        if known is None:
            if self.size is None or self.decimals is None:
                raise ValueError(f"identifier {self.data_id} is not one of the built-in common identifiers; "
                                 "give its size and decimals")
            return self
        if self.unit is not None:
            try:
                units.conversion(known.unit, self.unit)
            except units.UnitError as exc:
                raise ValueError(f"identifier {self.data_id} is read in {known.unit}, which cannot be given in "
                                 f"unit {self.unit!r} ({exc}); give a unit of the same quantity, or leave unit out"
                                 ) from exc
        return self

    @property
    def identifier(self) -> int:
        return int(self.data_id, 16)

    def data_format(self) -> DataFormat:
        """How the value travels: the built-in format of the identifier, with any size, decimals or
        signed given here instead. Its unit is the one the meter counts in (not the point's)."""
        known = common_format(self.identifier)
        base = known or DataFormat(self.size or 4, self.decimals or 0, self.unit or "1")
        return DataFormat(self.size or base.size,
                          base.decimals if self.decimals is None else self.decimals,
                          base.unit,
                          base.signed if self.signed is None else self.signed)

    def conversion(self) -> units.Conversion:
        """From the unit the meter counts in to the point's unit (identity for identifiers not built in)."""
        known = common_format(self.identifier)
        if known is None or self.unit is None:
            return units.Conversion()
        return units.conversion(known.unit, self.unit)


class Dlt645Meter(OnBus):
    """A DL/T 645 meter, wherever its bus is: the settings both kinds of bus share."""

    address: str = Field(pattern=r"^([0-9]{12}|A{12})$",
                         description="12 digits as on the nameplate; AAAAAAAAAAAA for a lone meter on its bus.")
    wake_up: int = Field(4, ge=0, le=8, description="FE bytes sent before each request.")
    points: list[Dlt645Point]

    def bus_address(self) -> str | None:
        return f"DL/T 645 address {self.address}"


class Dlt645Device(Dlt645Meter, SerialDevice):
    """A DL/T 645 meter on a local serial port."""

    protocol: Literal["dlt645"]


class Dlt645OverTcpDevice(Dlt645Meter, BusOverTcp):
    """A DL/T 645 meter on the RS-485 line of a serial device server (transparent TCP)."""

    protocol: Literal["dlt645-over-tcp"]
