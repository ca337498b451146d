"""Configuration of DL/T 645 electricity meters (2007 and 1997 editions). Imports no vendor library.

A point names a data identifier: 4 bytes for the 2007 edition (e.g. 00010000 forward active energy),
2 bytes for the 1997 edition (9010 forward active energy, B611 phase A voltage), as the device's
`edition` says.
The common identifiers bring their own BCD format and unit; a point's `unit`
then defaults to the identifier's, and another unit of the same quantity (Wh
for kWh) makes the meter convert the value to it. Any other identifier needs
`size` and `decimals` (and `signed`, `unit`) from the meter's documentation.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, PositiveInt, model_validator

from drivers.dlt645.frames import DataFormat, format_of
from drivers.serial.config import BusOverTcp, OnBus, SerialDevice
from gateway.model import units
from gateway.model.devices import PointBase
from gateway.model.schema import record

WILDCARD_ADDRESS = "A" * 12


@record
class Dlt645Point(PointBase):
    data_id: str = Field(pattern=r"^([0-9A-Fa-f]{8}|[0-9A-Fa-f]{4})$",
                         description="In hex: DI3 DI2 DI1 DI0 (2007, e.g. 02010100) or DI1 DI0 (1997, e.g. B611).")
    size: PositiveInt | None = Field(None, le=16, description="Bytes of the value, for identifiers not built in.")
    decimals: int | None = Field(None, ge=0, le=8)
    signed: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _unit_of_identifier(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("unit") is None and isinstance(raw.get("data_id"), str):
            try:
                known = format_of(raw["data_id"])
            except ValueError:
                return raw
            if known is not None:
                raw = {**raw, "unit": known.unit}
        return raw

    @model_validator(mode="after")
    def _format_known(self) -> Self:
        known = format_of(self.data_id)
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
        known = format_of(self.data_id)
        base = known or DataFormat(self.size or 4, self.decimals or 0, self.unit or "1")
        return DataFormat(self.size or base.size,
                          base.decimals if self.decimals is None else self.decimals,
                          base.unit,
                          base.signed if self.signed is None else self.signed)

    def conversion(self) -> units.Conversion:
        """From the unit the meter counts in to the point's unit (identity for identifiers not built in)."""
        known = format_of(self.data_id)
        if known is None or self.unit is None:
            return units.Conversion()
        return units.conversion(known.unit, self.unit)


class Dlt645Meter(OnBus):
    """A DL/T 645 meter, wherever its bus is: the settings both kinds of bus share."""

    address: str = Field(pattern=r"^([0-9]{12}|A{12})$",
                         description="12 digits as on the nameplate; AAAAAAAAAAAA for a lone meter on its bus.")
    edition: Literal["2007", "1997"] = Field("2007", description="2007: 4-byte identifiers, read 11H; "
                                                               "1997: 2-byte identifiers, read 01H.")
    wake_up: int = Field(4, ge=0, le=8, description="FE bytes sent before each request.")
    points: list[Dlt645Point]

    @model_validator(mode="after")
    def _identifiers_of_the_edition(self) -> Self:
        digits = 8 if self.edition == "2007" else 4
        wrong = [p.name for p in self.points if len(p.data_id) != digits]
        if wrong:
            raise ValueError(f"points {', '.join(wrong)} give identifiers that are not of the {self.edition} "
                             f"edition ({digits} hex digits, e.g. {'00010000' if digits == 8 else '9010'}); "
                             "set `edition:` to the meter's")
        return self

    def bus_address(self) -> str | None:
        return f"DL/T 645 address {self.address}"


class Dlt645Device(Dlt645Meter, SerialDevice):
    """A DL/T 645 meter on a local serial port."""

    protocol: Literal["dlt645"]


class Dlt645OverTcpDevice(Dlt645Meter, BusOverTcp):
    """A DL/T 645 meter on the RS-485 line of a serial device server (transparent TCP)."""

    protocol: Literal["dlt645-over-tcp"]
