"""Processing rules: how an indicator is quantified at the edge (docs/processing.md).

Set per indicator in the catalogue and overridden per point (`processing:`) or per
derived indicator. Pure schema: the processing stage (gateway/processing/) runs them.
"""

from __future__ import annotations

import enum
from typing import Self

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, field_validator, model_validator

from gateway.model.expression import parse
from gateway.model.schema import Id, Seconds, SecondsOrZero, StrictModel


class Reporting(StrictModel):
    """Report by exception: which readings of a series are worth publishing."""

    deadband: NonNegativeFloat = Field(0.0, description="Publish when the value moves MORE than this (canonical unit).")
    deadband_percent: NonNegativeFloat = Field(
        0.0, description="Or more than this percentage of the last published value; the larger band wins.")
    max_silence: Seconds | None = Field(
        900.0, description="Seconds after which the current value is published anyway (heartbeat); null: never.")
    min_interval: SecondsOrZero = Field(0.0, description="Seconds between two publications of a changed value.")

    @model_validator(mode="after")
    def _interval_within_silence(self) -> Self:
        if self.max_silence is not None and self.min_interval > self.max_silence:
            raise ValueError(f"min_interval ({self.min_interval:g} s) must not exceed max_silence "
                             f"({self.max_silence:g} s)")
        return self


class Counter(StrictModel):
    """A cumulative register: consumption per window, roll-over and reset detection."""

    rollover_bits: int | None = Field(
        None, description="Register width (16, 32 or 64) the raw counter rolls over at; null: it never rolls over.")
    raw_scale: PositiveFloat = Field(
        1.0, description="Canonical units per raw register count, so the roll-over is found in canonical units.")
    max_per_hour: PositiveFloat | None = Field(
        None, description="The most the register can grow in an hour, in canonical units, with a margin (a water "
                          "meter's maximum flow in m3/h, an energy meter's maximum power in kW): a backwards step "
                          "whose roll-over would mean more is a reset.")

    @field_validator("rollover_bits")
    @classmethod
    def _known_width(cls, bits: int | None) -> int | None:
        if bits is not None and bits not in (16, 32, 64):
            raise ValueError(f"expected 16, 32 or 64, found {bits}")
        return bits

    @property
    def modulus(self) -> float | int | None:
        """The canonical value at which the register wraps to zero (an exact int when unscaled)."""
        if self.rollover_bits is None:
            return None
        return 2 ** self.rollover_bits if self.raw_scale == 1.0 else float(2 ** self.rollover_bits) * self.raw_scale


class AlarmLevel(enum.StrEnum):
    HIGH_HIGH = "high-high"
    HIGH = "high"
    LOW = "low"
    LOW_LOW = "low-low"
    STATE = "state"  # the value equals `state` (a methane alarm contact, a door switch)

    @property
    def is_high(self) -> bool:
        return self in (AlarmLevel.HIGH_HIGH, AlarmLevel.HIGH)


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"


_DEFAULT_SEVERITY = {AlarmLevel.HIGH_HIGH: Severity.CRITICAL, AlarmLevel.LOW_LOW: Severity.CRITICAL,
                     AlarmLevel.HIGH: Severity.MAJOR, AlarmLevel.LOW: Severity.MAJOR, AlarmLevel.STATE: Severity.MAJOR}


class AlarmRule(StrictModel):
    """One limit (or one alarm state) of an indicator, with hysteresis and delays."""

    id: Id | None = Field(None, description="Alarm id, unique per asset; defaults to <indicator>-<level>.")
    level: AlarmLevel
    limit: float | None = Field(None, description="Threshold in the canonical unit (not for level state).")
    state: bool | int | str | None = Field(None, description="For level state: the value meaning alarm (true).")
    hysteresis: NonNegativeFloat = Field(0.0, description="How far back across the limit the value must go to clear.")
    delay_on: SecondsOrZero = Field(0.0, description="Seconds the condition must hold before the alarm is raised.")
    delay_off: SecondsOrZero = Field(0.0, description="Seconds the clear condition must hold before it clears.")
    severity: Severity | None = Field(None, description="Defaults: critical for high-high/low-low, major otherwise.")
    message: str = ""

    @model_validator(mode="after")
    def _limit_or_state(self) -> Self:
        if self.level is AlarmLevel.STATE:
            if self.limit is not None or self.hysteresis:
                raise ValueError("a state alarm has `state:` (default true), not `limit:` or `hysteresis:`")
        elif self.limit is None or self.state is not None:
            raise ValueError(f"a {self.level} alarm needs `limit:` (and has no `state:`)")
        return self

    @property
    def alarm_state(self) -> bool | int | str:
        return True if self.state is None else self.state

    @property
    def effective_severity(self) -> Severity:
        return self.severity or _DEFAULT_SEVERITY[self.level]

    def alarm_id(self, indicator: str) -> str:
        return self.id or f"{indicator}-{self.level}"

    def describe(self, indicator: str) -> dict[str, object]:
        """The rule as listed in the asset's self-description."""
        body: dict[str, object] = {"id": self.alarm_id(indicator), "level": self.level.value,
                                   "severity": self.effective_severity.value}
        if self.level is AlarmLevel.STATE:
            body["state"] = self.alarm_state
        else:
            body["limit"] = self.limit
            body["hysteresis"] = self.hysteresis
        body["delay_on"] = self.delay_on
        body["delay_off"] = self.delay_off
        if self.message:
            body["message"] = self.message
        return body


# Windows are aligned to the UTC clock, so every window size must divide a day into whole windows.
_SECONDS_PER_DAY = 86_400


def check_alarms(alarms: list[AlarmRule] | None) -> list[AlarmRule] | None:
    if not alarms:
        return alarms
    ids = [a.id for a in alarms if a.id is not None] + [str(a.level) for a in alarms if a.id is None]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"alarm ids must be unique; give `id:` to tell apart {', '.join(duplicates)}")
    levels = [a.level for a in alarms]
    limits = {a.level: a.limit for a in alarms if a.limit is not None and levels.count(a.level) == 1}
    _check_order({level: float(limit) for level, limit in limits.items() if limit is not None})
    return alarms


# The limits, from the bottom up: low-low <= low < high <= high-high.
_LIMIT_ORDER = (AlarmLevel.LOW_LOW, AlarmLevel.LOW, AlarmLevel.HIGH, AlarmLevel.HIGH_HIGH)
_LOW_SIDE = {AlarmLevel.LOW_LOW, AlarmLevel.LOW}


def _check_order(limits: dict[AlarmLevel, float]) -> None:
    """The limits as a whole: an outer limit never inside its inner one, a low one always below a high one."""
    present = [level for level in _LIMIT_ORDER if level in limits]
    for index, lower in enumerate(present):
        for upper in present[index + 1:]:
            crossing = (lower in _LOW_SIDE) != (upper in _LOW_SIDE)
            if limits[lower] > limits[upper] or (crossing and limits[lower] == limits[upper]):
                if not crossing:
                    outer, inner = (lower, upper) if lower is AlarmLevel.LOW_LOW else (upper, lower)
                    raise ValueError(f"the {outer} limit ({limits[outer]:g}) is inside the {inner} limit "
                                     f"({limits[inner]:g}); expected low-low <= low < high <= high-high")
                raise ValueError(f"the {lower} limit ({limits[lower]:g}) is not below the {upper} limit "
                                 f"({limits[upper]:g}); expected low-low <= low < high <= high-high")


def check_windows(windows: list[PositiveInt] | None) -> list[PositiveInt] | None:
    for seconds in windows or ():
        if _SECONDS_PER_DAY % seconds:
            raise ValueError(f"window {seconds} s does not divide a day; expected e.g. 60, 300, 900, 3600, 86400")
    if windows and len(set(windows)) != len(windows):
        raise ValueError("window sizes are listed twice")
    return windows


class Processing(StrictModel):
    """The processing rules of one series. In a point's `processing:` each key given replaces the catalogue's."""

    reporting: Reporting | None = Field(None, description="Report by exception; null: publish every reading.")
    windows: list[PositiveInt] | None = Field(None, description="Window sizes (s), aligned to UTC, e.g. [60, 900].")
    counter: Counter | None = Field(None, description="For cumulative indicators: roll-over of the register.")
    alarms: list[AlarmRule] | None = None

    _alarms_ok = field_validator("alarms")(check_alarms)
    _windows_ok = field_validator("windows")(check_windows)

    @property
    def is_empty(self) -> bool:
        return self.reporting is None and not self.windows and not self.alarms

    def overridden_by(self, override: Processing | None) -> Processing:
        """These rules with every key that `override` sets replaced (a whole key, never merged inside)."""
        if override is None:
            return self
        return self.model_copy(update={key: getattr(override, key) for key in override.model_fields_set})


class NightMinimum(StrictModel):
    """The lowest interval mean of an indicator inside a nightly window (minimum night flow)."""

    of: Id = Field(description="The indicator of the same asset whose interval means are compared, e.g. flow.")
    start: str = Field("02:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="Local time HH:MM.")
    end: str = Field("04:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="Local time HH:MM.")
    interval: PositiveInt = Field(900, description="Seconds per interval mean, e.g. 900 (15 min).")
    utc_offset: str = Field("+00:00", pattern=r"^[+-]([01][0-9]|2[0-3]):[0-5][0-9]$",
                            description="Local time of the night window, e.g. +08:00.")

    @staticmethod
    def _minutes(hhmm: str) -> int:
        return int(hhmm[-5:-3]) * 60 + int(hhmm[-2:])

    @property
    def start_minute(self) -> int:
        return self._minutes(self.start)

    @property
    def end_minute(self) -> int:
        return self._minutes(self.end)

    @property
    def offset_minutes(self) -> int:
        return (-1 if self.utc_offset.startswith("-") else 1) * self._minutes(self.utc_offset)

    @model_validator(mode="after")
    def _whole_intervals(self) -> Self:
        length = (self.end_minute - self.start_minute) % (24 * 60)
        start_utc_s = ((self.start_minute - self.offset_minutes) % (24 * 60)) * 60
        if length == 0 or (length * 60) % self.interval or start_utc_s % self.interval:
            raise ValueError(f"the night window {self.start}-{self.end} must be a whole number of "
                             f"{self.interval} s intervals, starting on one")
        return self


class DerivedIndicator(StrictModel):
    """An indicator of an asset computed at the gateway from other indicators of the same asset."""

    indicator: Id = Field(description="The catalogue indicator the result is published as.")
    expression: str | None = Field(None, description="e.g. 'prv-upstream-pressure - prv-downstream-pressure'.")
    night_minimum: NightMinimum | None = None
    max_age: Seconds = Field(300.0, description="Seconds an input may be old before the result is uncertain.")
    processing: Processing | None = Field(None, description="Overrides the catalogue's rules for the result.")

    @model_validator(mode="after")
    def _one_definition(self) -> Self:
        if (self.expression is None) == (self.night_minimum is None):
            raise ValueError("give exactly one of `expression:` or `night_minimum:`")
        if self.expression is not None:
            parse(self.expression)  # raises ValueError naming the position of the problem
        return self

    def inputs(self) -> frozenset[str]:
        if self.night_minimum is not None:
            return frozenset({self.night_minimum.of})
        return parse(self.expression or "").names
