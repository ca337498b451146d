"""The metadata catalogue: domains, asset types and indicators.

The catalogue is the shared vocabulary of the city platform. Every reading the
gateway sends names one indicator from it and carries its value in that
indicator's canonical unit.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Any, Self

from pydantic import Field, PositiveInt, PrivateAttr, field_validator, model_validator

from gateway.model import units
from gateway.model.rules import AlarmRule, Counter, Processing, Reporting, check_alarms, check_windows
from gateway.model.schema import Id, StrictModel, check_range


class Names(StrictModel):
    en: str
    zh: str


class IndicatorKind(enum.StrEnum):
    MEASUREMENT = "measurement"
    STATE = "state"
    COUNTER = "counter"
    ALARM = "alarm"


class Quantification(enum.StrEnum):
    """How a value of the indicator is to be understood."""

    INSTANTANEOUS = "instantaneous"  # a sample of a continuously varying quantity
    MEAN = "mean"  # an average the device computed over its own interval
    CUMULATIVE = "cumulative"  # a totaliser that only grows (until roll-over or replacement)
    STATE = "state"  # a discrete state; every change matters
    EVENT = "event"  # a condition that is raised and cleared


@dataclass(frozen=True, slots=True)
class Source:
    """A catalogue file as the entries it defines name it: the shipped one, or a site's or utility's overlay."""

    name: str  # the file's `name:` (the file name without .yaml when it has none)
    version: str
    file: str

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


_OVERRIDE = Field(False, description="Replaces the entry of the same id from an earlier catalogue file.")


class _Entry(StrictModel):
    """What every catalogue entry has: an id, and where it was defined (set when catalogue files are merged)."""

    id: Id
    override: bool = _OVERRIDE
    _source: Source | None = PrivateAttr(None)
    _where: str = PrivateAttr("")

    @property
    def source(self) -> Source | None:
        """The catalogue file that defined this entry (None for a catalogue made in code)."""
        return self._source

    @property
    def defined_at(self) -> str:
        """file:line:column of the entry, when it was read from a file."""
        return self._where

    def came_from(self, source: Source, where: str) -> None:
        self._source, self._where = source, where


class Domain(_Entry):
    name: Names


class Attribute(_Entry):
    """What describes an asset rather than measures it (station number, serial number, firmware version):
    read at connect and then rarely, published in the asset's self-description, never as readings."""

    name: Names
    description: str = ""


class AssetType(_Entry):
    domain: Id
    name: Names
    indicators: list[Id] = Field(default_factory=list)


@functools.cache
def _unit_code(unit: str) -> str:
    """UN/CEFACT code of a canonical unit, looked up once: every reading carries it."""
    return units.lookup(unit).code


class State(StrictModel):
    """One named state of a multi-state indicator (a working mode, an alarm number): its code and its name."""

    code: int = Field(ge=-(2**63), lt=2**64)
    id: Id
    name: Names


class Indicator(_Entry):
    name: Names
    kind: IndicatorKind
    unit: str
    range: tuple[float, float] | None = None
    quantified: Quantification
    description: str = ""
    # A multi-state integer (kind state or alarm, unit state) may name its codes; a reading then carries both.
    states: list[State] | None = None
    # Default processing of every point feeding this indicator (a point's `processing:` overrides per key).
    reporting: Reporting | None = None
    windows: list[PositiveInt] | None = None
    counter: Counter | None = None
    alarms: list[AlarmRule] | None = None
    _processing: Processing | None = PrivateAttr(None)

    _alarms_ok = field_validator("alarms")(check_alarms)
    _windows_ok = field_validator("windows")(check_windows)

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, symbol: str) -> str:
        if not units.is_known(symbol):
            raise ValueError(f"unknown unit {symbol!r}; expected one of {', '.join(sorted(units.UNITS))}")
        return units.lookup(symbol).symbol

    @model_validator(mode="after")
    def _ordered_range(self) -> Self:
        check_range(self.range)
        return self

    @model_validator(mode="after")
    def _states_are_distinct(self) -> Self:
        if self.states is None:
            return self
        if self.unit != "state" or self.kind not in (IndicatorKind.STATE, IndicatorKind.ALARM):
            raise ValueError("`states:` is for multi-state indicators: expected kind state or alarm with unit "
                             f"state, found kind {self.kind} with unit {self.unit}")
        for what in ("code", "id"):
            seen = [getattr(state, what) for state in self.states]
            twice = sorted({str(v) for v in seen if seen.count(v) > 1})
            if twice:
                raise ValueError(f"expected each state's {what} once, found {', '.join(twice)} more than once")
        for rule in self.alarms or ():
            if isinstance(rule.state, str) and self.state_named(rule.state) is None:
                raise ValueError(f"alarm state {rule.state!r} is not one of the indicator's states; expected one of: "
                                 f"{', '.join(s.id for s in self.states)}")
        return self

    @property
    def boolean(self) -> bool:
        """A true/false indicator (named after what `true` means): unit state, no range and no named states."""
        return self.unit == "state" and self.range is None and self.states is None

    def state_named(self, state_id: str) -> State | None:
        return next((state for state in self.states or () if state.id == state_id), None)

    @property
    def unit_code(self) -> str:
        return _unit_code(self.unit)

    @property
    def processing(self) -> Processing:
        """The catalogue's default processing rules for this indicator (one object, shared by its points)."""
        if self._processing is None:
            self._processing = Processing.model_construct(
                _fields_set={k for k in ("reporting", "windows", "counter", "alarms") if getattr(self, k) is not None},
                reporting=self.reporting, windows=self.windows, counter=self.counter, alarms=self.alarms)
        return self._processing


class CatalogueFile(StrictModel):
    """One catalogue file as written: the shipped catalogue, or an overlay that adds to (or overrides) it."""

    name: Id | None = Field(None, description="Names this catalogue in self-descriptions; default: the file name.")
    version: str = "1"
    description: str = ""
    domains: list[Domain] = Field(default_factory=list)
    asset_types: list[AssetType] = Field(default_factory=list)
    indicators: list[Indicator] = Field(default_factory=list)
    attributes: list[Attribute] = Field(default_factory=list)


class Catalogue(StrictModel):
    version: str = "1"
    name: Id | None = None
    description: str = ""
    domains: list[Domain]
    asset_types: list[AssetType]
    indicators: list[Indicator]
    attributes: list[Attribute] = Field(default_factory=list)

    _indicators: dict[str, Indicator] = PrivateAttr(default_factory=dict)
    _asset_types: dict[str, AssetType] = PrivateAttr(default_factory=dict)
    _sources: tuple[Source, ...] = PrivateAttr(())

    def model_post_init(self, context: Any, /) -> None:
        self._indicators = {i.id: i for i in self.indicators}
        self._asset_types = {t.id: t for t in self.asset_types}

    @classmethod
    def merged(cls, sources: list[tuple[Source, CatalogueFile]], domains: list[Domain],
               asset_types: list[AssetType], indicators: list[Indicator], attributes: list[Attribute]) -> Catalogue:
        """The catalogue of several files whose entries the loader has merged (and checked across files)."""
        first = sources[0][1]
        catalogue = cls.model_construct(version=first.version, name=first.name, description=first.description,
                                        domains=domains, asset_types=asset_types, indicators=indicators,
                                        attributes=attributes)
        catalogue.model_post_init(None)
        catalogue._sources = tuple(source for source, _ in sources)
        return catalogue

    @property
    def sources(self) -> tuple[Source, ...]:
        """The files the catalogue was read from, the shipped one first (empty for one made in code)."""
        return self._sources

    def indicator(self, indicator_id: str) -> Indicator | None:
        return self._indicators.get(indicator_id)

    def attribute(self, attribute_id: str) -> Attribute | None:
        return next((a for a in self.attributes if a.id == attribute_id), None)

    def asset_type(self, type_id: str) -> AssetType | None:
        return self._asset_types.get(type_id)

    @model_validator(mode="after")
    def _references_resolve(self) -> Self:
        problems: list[str] = []
        for kind in ("domains", "asset_types", "indicators"):
            seen: set[str] = set()
            for entry in getattr(self, kind):
                if entry.id in seen:
                    problems.append(f"duplicate {kind[:-1].replace('_', ' ')} id {entry.id!r}")
                seen.add(entry.id)
        domains = {d.id for d in self.domains}
        indicators = {i.id for i in self.indicators}
        for asset_type in self.asset_types:
            if asset_type.domain not in domains:
                problems.append(f"asset type {asset_type.id!r} names unknown domain {asset_type.domain!r}")
            problems.extend(
                f"asset type {asset_type.id!r} lists unknown indicator {i!r}"
                for i in asset_type.indicators if i not in indicators
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

