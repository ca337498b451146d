"""Units the municipal domains use, and conversion between units of one quantity.

Each unit is known by its symbol (as written in YAML) and its UN/CEFACT common
code (as carried in readings and in OPC UA EUInformation). A unit converts to
another of the same quantity through the quantity's base unit:
    base = value * factor + offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Unit:
    symbol: str
    code: str
    quantity: str
    factor: float = 1.0
    offset: float = 0.0


_UNITS: tuple[Unit, ...] = (
    # pressure, base Pa
    Unit("Pa", "PAL", "pressure"),
    Unit("kPa", "KPA", "pressure", 1e3),
    Unit("MPa", "MPA", "pressure", 1e6),
    Unit("bar", "BAR", "pressure", 1e5),
    Unit("mbar", "MBR", "pressure", 1e2),
    Unit("mH2O", "MH2O", "pressure", 9806.65),
    # volume flow, base m³/s
    Unit("m3/s", "MQS", "flow", 1.0),
    Unit("m3/h", "MQH", "flow", 1 / 3600),
    Unit("m3/d", "G52", "flow", 1 / 86400),
    Unit("L/s", "G51", "flow", 1e-3),
    Unit("L/min", "L2", "flow", 1e-3 / 60),
    Unit("L/h", "E32", "flow", 1e-3 / 3600),
    # volume, base m³
    Unit("m3", "MTQ", "volume"),
    Unit("L", "LTR", "volume", 1e-3),
    # temperature, base K
    Unit("K", "KEL", "temperature"),
    Unit("°C", "CEL", "temperature", 1.0, 273.15),
    # length, base m
    Unit("m", "MTR", "length"),
    Unit("mm", "MMT", "length", 1e-3),
    Unit("cm", "CMT", "length", 1e-2),
    # electrical
    Unit("V", "VLT", "voltage"),
    Unit("kV", "KVT", "voltage", 1e3),
    Unit("A", "AMP", "current"),
    Unit("mA", "4K", "current", 1e-3),
    Unit("W", "WTT", "power"),
    Unit("kW", "KWT", "power", 1e3),
    Unit("MW", "MAW", "power", 1e6),
    Unit("var", "D44", "reactive-power"),
    Unit("kvar", "KVR", "reactive-power", 1e3),
    Unit("VA", "D46", "apparent-power"),
    Unit("kVA", "KVA", "apparent-power", 1e3),
    Unit("Wh", "WHR", "energy"),
    Unit("kWh", "KWH", "energy", 1e3),
    Unit("MWh", "MWH", "energy", 1e6),
    Unit("MJ", "3B", "energy", 1e6 / 3600),
    Unit("GJ", "GV", "energy", 1e9 / 3600),
    Unit("kvarh", "K3", "reactive-energy"),
    Unit("Hz", "HTZ", "frequency"),
    # water quality, air
    Unit("mg/L", "M1", "mass-concentration-liquid"),
    Unit("µg/L", "H29", "mass-concentration-liquid", 1e-3),
    Unit("mg/m3", "GP", "mass-concentration-air"),
    Unit("µg/m3", "GQ", "mass-concentration-air", 1e-3),
    Unit("NTU", "NTU", "turbidity"),
    Unit("µS/cm", "G42", "conductivity"),
    Unit("pH", "pH", "ph"),
    # other
    Unit("%", "P1", "ratio", 1e-2),
    Unit("1", "C62", "ratio"),
    Unit("%LEL", "P1LEL", "lel"),
    Unit("lx", "LUX", "illuminance"),
    Unit("m/s", "MTS", "speed"),
    Unit("r/min", "RPM", "rotational-speed"),
    Unit("s", "SEC", "time"),
    Unit("min", "MIN", "time", 60.0),
    Unit("h", "HUR", "time", 3600.0),
    Unit("d", "DAY", "time", 86400.0),
    # dimensionless states and counts: no conversion
    Unit("state", "C62STATE", "state"),
    Unit("count", "C62COUNT", "count"),
    Unit("text", "TEXT", "text"),
    # weather, flood control and municipal facilities (appended: earlier entries keep their place)
    Unit("hPa", "A97", "pressure", 1e2),
    Unit("km/h", "KMH", "speed", 1 / 3.6),
    Unit("kn", "KNT", "speed", 1852 / 3600),
    # rainfall intensity, base mm/h: a depth of water per time, kept apart from speeds so that a wind
    # speed cannot feed a rainfall indicator by accident
    Unit("mm/h", "H67", "precipitation-rate"),
    Unit("mm/min", "H81", "precipitation-rate", 60.0),
    # plane angle, base rad (wind direction, tilt)
    Unit("rad", "C81", "angle"),
    Unit("°", "DD", "angle", math.pi / 180),
    # irradiance, base W/m² (solar radiation)
    Unit("W/m2", "D54", "irradiance"),
)

# Common spellings accepted in YAML, mapped to the symbol above.
_ALIASES: dict[str, str] = {
    "m³/h": "m3/h", "m³/s": "m3/s", "m³/d": "m3/d", "m³": "m3", "l/s": "L/s", "l/min": "L/min",
    "l/h": "L/h", "l": "L", "degC": "°C", "C": "°C", "ºC": "°C", "kpa": "kPa", "mpa": "MPa",
    "ug/L": "µg/L", "uS/cm": "µS/cm", "ug/m3": "µg/m3", "rpm": "r/min", "pct": "%",
    "mH₂O": "mH2O", "mwc": "mH2O",
    "hpa": "hPa", "kmh": "km/h", "km/hr": "km/h", "knot": "kn", "mm/hr": "mm/h",
    "deg": "°", "degree": "°", "º": "°", "W/m²": "W/m2", "W/m^2": "W/m2", "%RH": "%", "%rh": "%",
}

UNITS: dict[str, Unit] = {u.symbol: u for u in _UNITS}


class UnitError(ValueError):
    """A unit that is not known, or that cannot be converted to the wanted one."""


def lookup(symbol: str) -> Unit:
    unit = UNITS.get(_ALIASES.get(symbol, symbol))
    if unit is None:
        raise UnitError(f"unknown unit {symbol!r}")
    return unit


def is_known(symbol: str) -> bool:
    return _ALIASES.get(symbol, symbol) in UNITS


@dataclass(frozen=True, slots=True)
class Conversion:
    """A precomputed linear conversion: target = value * scale + shift."""

    scale: float = 1.0
    shift: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.shift == 0.0

    def apply(self, value: float) -> float:
        return value * self.scale + self.shift


def conversion(source: str, target: str) -> Conversion:
    """The conversion from `source` to `target`, or UnitError if they measure different things."""
    src, dst = lookup(source), lookup(target)
    if src.quantity != dst.quantity:
        raise UnitError(f"cannot convert {src.symbol} ({src.quantity}) to {dst.symbol} ({dst.quantity})")
    if src == dst:
        return Conversion()
    scale = src.factor / dst.factor
    shift = (src.offset - dst.offset) / dst.factor
    return Conversion(scale, shift)
