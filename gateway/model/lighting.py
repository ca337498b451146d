"""Street-lighting schedules: the `site:` and `lighting:` sections of the main file, and what a schedule says at
any moment, computed at the gateway (no uplink needed).

A circuit is one writable point: a contactor coil (on/off) or a dimming register (a level in %). Its
schedule switches it on at `switch_on` and off at `switch_off` (not `on`/`off`: YAML 1.1 reads those as
booleans), each either a fixed local time ("18:30") or a sun event
with an offset in minutes ("sunset+10", "sunrise-15", "dusk", "dawn"), computed from the site's latitude
and longitude in its time zone by `astral` (imported only when a circuit is configured). A dimming circuit
steps through `levels` while on (100 % at dusk, 50 % from 23:00, 100 % from 05:00). `exceptions` replace a
date's `switch_on`/`switch_off`, or keep the circuit `dark` that day (no switching on).

Pure: `Schedule.value_at(t)` is what the circuit should be at UTC ms `t`, `Schedule.events(start, end)` every
switching time between two moments. Days without a sunset (polar summer) have no sun event.
"""

from __future__ import annotations

import datetime
import re
import zoneinfo
from dataclasses import dataclass
from typing import Any, Self

from pydantic import Field, field_validator, model_validator

from gateway.model.schema import Id, PointName, StrictModel

_TIME = re.compile(r"^(?:(?P<hh>[01]\d|2[0-3]):(?P<mm>[0-5]\d)|(?P<sun>sunset|sunrise|dusk|dawn)"
                   r"(?:(?P<sign>[+-])(?P<offset>\d{1,3}))?)$")
_DAY_MS = 86_400_000


class SiteSettings(StrictModel):
    latitude: float = Field(ge=-90, le=90, description="Degrees north.")
    longitude: float = Field(ge=-180, le=180, description="Degrees east.")
    timezone: str = Field(description="IANA time zone of the site, e.g. Asia/Shanghai.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r}; expected an IANA name such as Asia/Shanghai") from None
        return name


def _check_time(text: str) -> str:
    if not _TIME.match(text):
        raise ValueError(f"{text!r} is not a time; expected HH:MM (local) or sunset, sunrise, dusk, dawn with an "
                         "offset in minutes (sunset+10, sunrise-15)")
    return text


class Level(StrictModel):
    at: str = Field(description="Local time HH:MM, or a sun event with offset.")
    level: float = Field(ge=0, le=100, description="Dimming level in % from then on (while the circuit is on).")

    _time = field_validator("at")(_check_time)


class DayException(StrictModel):
    date: datetime.date
    switch_on: str | None = None
    switch_off: str | None = None
    dark: bool = Field(False, description="Do not switch on this day.")

    _on = field_validator("switch_on")(lambda v: v if v is None else _check_time(v))
    _off = field_validator("switch_off")(lambda v: v if v is None else _check_time(v))


class CircuitSettings(StrictModel):
    id: Id
    device: Id
    point: PointName = Field(description="A writable point: a contactor coil (on/off) or a dimming level (%).")
    switch_on: str = Field("sunset", description="When the circuit switches on: HH:MM or sunset+N / dusk ...")
    switch_off: str = Field("sunrise", description="When it switches off.")
    on_level: float = Field(100.0, ge=0, le=100, description="Dimming level at switching on.")
    levels: list[Level] = Field(default_factory=list, description="Dimming steps while on.")
    exceptions: list[DayException] = Field(default_factory=list, description="Dates that differ.")

    _on = field_validator("switch_on")(_check_time)
    _off = field_validator("switch_off")(_check_time)

    @model_validator(mode="after")
    def _distinct_dates(self) -> Self:
        dates = [e.date for e in self.exceptions]
        if len(dates) != len(set(dates)):
            raise ValueError("each date may have one exception")
        return self


class LightingSettings(StrictModel):
    allow_unsynchronised_clock: bool = Field(
        False, description="Switch by the schedule even while the clock is known not to be synchronised "
                           "(otherwise the circuit is left as it is and the held state is reported).")
    circuits: list[CircuitSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct_ids(self) -> Self:
        ids = [c.id for c in self.circuits]
        if len(ids) != len(set(ids)):
            raise ValueError("circuit ids must be unique")
        return self


@dataclass(frozen=True, slots=True)
class Event:
    at_ms: int
    value: bool | float  # on/off for a coil, a level (0 off) for a dimming point
    what: str  # "on", "off", "level"


class Schedule:
    """What one circuit's schedule says. `dimming`: the point is a level (values in %), else on/off."""

    def __init__(self, circuit: CircuitSettings, site: SiteSettings, dimming: bool) -> None:
        from astral import Observer  # imported only when schedules are configured

        self.circuit = circuit
        self.dimming = dimming
        self.zone = zoneinfo.ZoneInfo(site.timezone)
        self._observer = Observer(site.latitude, site.longitude)
        self._exceptions = {e.date: e for e in circuit.exceptions}
        self._sun_cache: dict[datetime.date, dict[str, datetime.datetime] | None] = {}

    def value_at(self, at_ms: int) -> bool | float:
        """What the circuit should be at `at_ms` (UTC ms)."""
        on = False
        level = self.circuit.on_level
        for event in self._day_events(at_ms, days_before=2):
            if event.at_ms > at_ms:
                break
            if event.what == "on":
                on, level = True, self.circuit.on_level
            elif event.what == "off":
                on = False
            else:
                level = float(event.value)
        if not self.dimming:
            return on
        return level if on else 0.0

    def events(self, start_ms: int, end_ms: int) -> list[Event]:
        """Every change of the circuit's value in (start, end], with the value it changes to."""
        changes = []
        current = self.value_at(start_ms)
        for event in self._day_events(start_ms, days_before=0, days_after=(end_ms - start_ms) // _DAY_MS + 2):
            if event.at_ms <= start_ms or event.at_ms > end_ms:
                continue
            value = self.value_at(event.at_ms)
            if value != current:
                changes.append(Event(event.at_ms, value, event.what))
                current = value
        return changes

    def _day_events(self, at_ms: int, days_before: int, days_after: int = 1) -> list[Event]:
        today = datetime.datetime.fromtimestamp(at_ms / 1000, self.zone).date()
        events: list[Event] = []
        for offset in range(-days_before - 1, days_after + 1):
            day = today + datetime.timedelta(days=offset)
            exception = self._exceptions.get(day)
            on_spec = exception.switch_on if exception is not None and exception.switch_on is not None \
                else self.circuit.switch_on
            off_spec = exception.switch_off if exception is not None and exception.switch_off is not None \
                else self.circuit.switch_off
            on_ms = None if exception is not None and exception.dark else self._moment(day, on_spec)
            off_ms = self._moment(day, off_spec)
            if on_ms is not None:
                events.append(Event(on_ms, True, "on"))
            if off_ms is not None:
                events.append(Event(off_ms, False, "off"))
            if self.dimming:
                for step in self.circuit.levels:
                    step_ms = self._moment(day, step.at)
                    if step_ms is not None:
                        events.append(Event(step_ms, step.level, "level"))
        # At one instant: a level step first, then off, then on (a circuit switched on gets its on level).
        order = {"level": 0, "off": 1, "on": 2}
        return sorted(events, key=lambda e: (e.at_ms, order[e.what]))

    def _moment(self, day: datetime.date, spec: str) -> int | None:
        match = _TIME.match(spec)
        assert match is not None, "validated"
        if match["hh"] is not None:
            local = datetime.datetime.combine(day, datetime.time(int(match["hh"]), int(match["mm"])), self.zone)
            return int(local.timestamp() * 1000)
        sun = self._sun(day)
        if sun is None or match["sun"] not in sun:
            return None
        offset = int(match["offset"] or 0) * (-1 if match["sign"] == "-" else 1)
        return int(sun[match["sun"]].timestamp() * 1000) + offset * 60_000

    def _sun(self, day: datetime.date) -> dict[str, datetime.datetime] | None:
        if day not in self._sun_cache:
            self._sun_cache[day] = _sun_times(self._observer, day, self.zone)
        return self._sun_cache[day]


def _sun_times(observer: Any, day: datetime.date, zone: zoneinfo.ZoneInfo) -> dict[str, datetime.datetime] | None:
    from astral import sun

    times: dict[str, datetime.datetime] = {}
    for name, function in (("dawn", sun.dawn), ("sunrise", sun.sunrise), ("sunset", sun.sunset),
                           ("dusk", sun.dusk)):
        try:
            times[name] = function(observer, day, tzinfo=zone)
        except ValueError:  # the sun does not reach that elevation on this day (polar day or night)
            continue
    return times
