"""What may be written to a point, resolved once, and the checks a written value passes before any byte goes out.

A point is writable only when its configuration says `writable: true`. A number needs its `write.range`
(what may be written, in the point's unit); a state may name its `allowed` values (a coil takes true and
false). The value a command carries is in the indicator's canonical unit, as the readings on the data
topic are, so the range and the step are converted to it here, once.

`WritePolicy.raw(value)` turns the canonical value into the driver's value by inverting the point's own
transform exactly (the same scale, offset and unit conversion as reading); a value that does not come out
as a whole number where the point holds integers, or that is off the step, is refused: nothing is rounded
behind the operator's back. The driver refuses what its data type cannot hold (an int16 past 32767).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.model import units
from gateway.model.catalogue import IndicatorKind
from gateway.model.expression import EvaluationError, Expression, parse
from gateway.model.readings import Quality, Reading, Value
from gateway.model.resolved import ResolvedPoint

# How far an inverted value may be from a whole number and still be that number (float rounding of
# 41.3 / 0.1 gives 412.99999999999994), relative to its size.
_INTEGER_TOLERANCE = 1e-9


class Refused(Exception):
    """A command that must not reach the device. `reason` is short and stable (README); the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WritePolicy:
    point: ResolvedPoint
    low: float | None  # what may be written, in the canonical unit
    high: float | None
    step: float | None  # in the canonical unit
    allowed: tuple[bool | int | str, ...] | None
    min_interval: float
    guard: Expression | None
    guard_max_age_ms: int
    confirm_within: float = 0.0  # seconds a poll may take to read the written value back

    @property
    def is_state(self) -> bool:
        return self.point.indicator.kind is not IndicatorKind.MEASUREMENT or self.allowed is not None

    def check(self, value: object) -> Value:
        """The canonical value as it will be written, or Refused (wrong type, not allowed, out of range, off step)."""
        name = self.point.name
        if isinstance(value, bool) or not isinstance(value, int | float):
            if self.allowed is not None and isinstance(value, bool | str) and _member(value, self.allowed):
                return value
            if self.allowed is None and isinstance(value, bool) and self.is_state:
                return value
            if self.allowed is not None:
                raise Refused("not-allowed", f"point {name} may be set to {_list(self.allowed)}, not {value!r}")
            raise Refused("wrong-type", f"point {name} takes a number, not {value!r}")
        if not math.isfinite(value):
            raise Refused("wrong-type", f"point {name} takes a finite number, not {value!r}")
        if self.allowed is not None:
            if not _member(value, self.allowed):
                raise Refused("not-allowed", f"point {name} may be set to {_list(self.allowed)}, not {value!r}")
            return value
        if self.low is None or self.high is None:
            if self.is_state:
                if value in (0, 1):
                    return bool(value)
                raise Refused("wrong-type", f"point {name} takes true or false (or 1 or 0), not {value!r}")
            raise Refused("not-writable", f"point {name} declares no write range")
        if not self.low <= value <= self.high:
            raise Refused("out-of-range", f"{value} is outside the write range {self.low:g}..{self.high:g} "
                                          f"{self.point.indicator.unit} of point {name}")
        if self.step is not None:
            steps = (value - self.low) / self.step
            if not _whole(steps):
                raise Refused("not-on-step", f"{value} is not on the step {self.step:g} from {self.low:g} "
                                             f"of point {name}")
        return value

    def raw(self, value: Value) -> Value:
        """The driver's value for canonical `value` (already checked): the point's transform inverted exactly, an
        inverted boolean the other way round, a named state's code the device's own."""
        transform = self.point.transform
        if isinstance(value, bool):
            return (not value) if transform.invert_boolean else value
        if not isinstance(value, int | float):
            return value
        if transform.states is not None and isinstance(value, int):
            return transform.states.device_code(value)
        if transform.keeps_integers:
            return round(value) if isinstance(value, float) and _whole(value) else value
        raw = transform.invert(value)
        # A whole number within float rounding is that number; anything else goes as it is, and a driver whose
        # point holds integers refuses it as not representable (it never rounds).
        return round(raw) if _whole(raw) else raw

    def confirms(self, wanted: Value, read_back: Value) -> bool:
        """Whether the value read back (canonical) is the one written (as close as the device's type keeps it)."""
        if isinstance(wanted, bool):
            return isinstance(read_back, bool | int) and bool(read_back) is wanted
        if isinstance(wanted, int | float) and isinstance(read_back, int | float) and not isinstance(read_back, bool):
            return math.isclose(read_back, wanted, rel_tol=1e-6, abs_tol=1e-9 + abs(self.point.transform.scale) * 1e-6)
        return wanted == read_back

    def check_guard(self, latest: Mapping[str, Reading], now_ms: int) -> None:
        """Refused unless the guard holds on good, fresh readings of the asset (no guard: nothing to check)."""
        if self.guard is None:
            return
        values: dict[str, float | int | bool | str | None] = {}
        for name in sorted(self.guard.names):
            reading = latest.get(name)
            if reading is None:
                raise Refused("guard", f"guard {self.guard.text!r}: no reading of {name} yet")
            if reading.quality is not Quality.GOOD:
                raise Refused("guard", f"guard {self.guard.text!r}: {name} is {reading.quality.value} "
                                       f"({reading.reason})")
            if now_ms - reading.receive_time_ms > self.guard_max_age_ms:
                raise Refused("guard", f"guard {self.guard.text!r}: {name} is stale (read "
                                       f"{(now_ms - reading.receive_time_ms) / 1000:.0f} s ago)")
            values[name] = reading.value
        try:
            holds = self.guard.evaluate(values)
        except EvaluationError as exc:
            raise Refused("guard", f"guard {self.guard.text!r} has no value: {exc}") from None
        if holds is not True:
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            raise Refused("guard", f"guard {self.guard.text!r} does not hold ({shown})")


def write_policy(point: ResolvedPoint) -> WritePolicy | None:
    """The point's policy, or None when it is not writable."""
    config = point.config
    if not config.writable:
        return None
    limits = config.write
    low = high = step = None
    allowed = None
    min_interval, guard, max_age, confirm_within = 1.0, None, 60_000, 0.0
    if limits is not None:
        if limits.range is not None:
            to_canonical = units.conversion(config.unit or point.indicator.unit, point.indicator.unit)
            low, high = sorted((to_canonical.apply(limits.range[0]), to_canonical.apply(limits.range[1])))
            if limits.step is not None:
                step = limits.step * abs(to_canonical.scale)
        allowed = tuple(limits.allowed) if limits.allowed is not None else None
        min_interval = limits.min_interval
        guard = parse(limits.guard) if limits.guard is not None else None
        max_age = round(limits.guard_max_age * 1000)
        confirm_within = limits.confirm_within
    return WritePolicy(point, low, high, step, allowed, min_interval, guard, max_age, confirm_within)


def _member(value: bool | int | float | str, allowed: tuple[bool | int | str, ...]) -> bool:
    """`value in allowed`, with true never taken for 1 nor 1 for true."""
    return any(type(a) is type(value) and a == value if isinstance(value, bool | str) or isinstance(a, bool | str)
               else a == value for a in allowed)


def _whole(number: float) -> bool:
    return abs(number - round(number)) <= _INTEGER_TOLERANCE * max(1.0, abs(number))


def _list(values: tuple[bool | int | str, ...]) -> str:
    return ", ".join(str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, str) else str(v)
                     for v in values)
