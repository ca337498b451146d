"""The configuration as the running gateway uses it: every point with its catalogue indicator, its compiled
conversion and its processing rules, every asset with its devices and derived indicators.

The loader (gateway/config/) validates the files, resolves them into these objects and runs every check
across them; the stages build their runtime state from these and never look an indicator up again.
The functions here are pure: given a valid catalogue entry they resolve one point or one derived
indicator, and raise ValueError (a UnitError for units) for what cannot be resolved.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic

from gateway.model import units
from gateway.model.catalogue import AssetType, Attribute, Catalogue, Indicator
from gateway.model.devices import AssetSettings, DeviceBase, PointBase
from gateway.model.driver import D
from gateway.model.expression import Expression, parse
from gateway.model.readings import AssetRef, Value
from gateway.model.rules import DerivedIndicator, Processing


class PointError(ValueError):
    """A point that cannot be resolved as written; `key` is the point's key to blame."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class StateMap:
    """A multi-state point's codes: the device's code -> (the catalogue's code, the state's id).
    Equal maps are one object, like transforms."""

    pairs: tuple[tuple[int, int, str], ...]  # (device code, catalogue code, state id)
    _by_code: dict[int, tuple[int, str]] = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_code", {device: (code, state) for device, code, state in self.pairs})

    def device_code(self, code: int) -> int:
        """The device's code for the catalogue's `code` (what to write to set that state); unchanged when the
        map has no other code for it."""
        return next((device for device, catalogue, _ in self.pairs if catalogue == code), code)

    def name(self, value: Value) -> tuple[Value, str | None]:
        """(the catalogue's code, the state id), or (the value unchanged, None) for a code it does not know."""
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            return value, None
        found = self._by_code.get(int(value))
        return (value, None) if found is None else found


@dataclass(frozen=True, slots=True)
class Transform:
    """From a driver's value to the indicator's canonical unit: value * scale + shift, then the valid range.

    Scale, offset and unit conversion are folded into one multiply and one add; an identity transform
    keeps integers exact (a 64-bit totaliser does not fit a float). A boolean may be inverted; the codes
    of a multi-state point are named by `states`.
    """

    scale: float
    shift: float
    low: float | None  # valid range in the canonical unit
    high: float | None
    invert_boolean: bool = False
    states: StateMap | None = None

    @property
    def keeps_integers(self) -> bool:
        return self.scale == 1.0 and self.shift == 0.0

    def convert(self, raw: Value) -> tuple[Value, bool]:
        """(canonical value, within range); text passes unchanged, a boolean is inverted when asked to."""
        if isinstance(raw, bool):
            return (not raw) if self.invert_boolean else raw, True
        if not isinstance(raw, int | float):
            return raw, True
        value: float | int = raw if self.keeps_integers else raw * self.scale + self.shift
        in_range = (self.low is None or value >= self.low) and (self.high is None or value <= self.high)
        return value, in_range

    def invert(self, canonical: float) -> float:
        """The driver's value that `convert` turns into `canonical` (what to write to get it)."""
        return (canonical - self.shift) / self.scale


def point_transform(point: PointBase, indicator: Indicator) -> Transform:
    """The point's transform to `indicator`; raises UnitError when its unit does not convert, PointError when
    its keys do not fit the indicator (scale on a boolean, states of an indicator that has none).
    Equal transforms are one object (a site's many devices of one model have the same ones)."""
    boolean = indicator.boolean or point.decodes_boolean
    if boolean or indicator.states is not None:
        for key, value, neutral in (("scale", point.scale, 1.0), ("offset", point.offset, 0.0)):
            if value == neutral:
                continue
            if boolean:
                raise PointError(key, f"`{key}` does not apply to a boolean (found {key}: {value:g}); "
                                      "expected `invert: true` to publish true for the device's false")
            raise PointError(key, f"`{key}` does not apply to the codes of multi-state indicator {indicator.id!r} "
                                  f"(found {key}: {value:g}); expected `states:` mapping the device's codes "
                                  "onto the catalogue's states")
    elif point.invert:
        raise PointError("invert", "`invert` is for boolean points; expected a true/false indicator, found "
                                   f"{indicator.id!r} ({indicator.kind}, {indicator.unit})")
    to_canonical = units.conversion(point.unit or indicator.unit, indicator.unit)
    scale = point.scale * to_canonical.scale
    shift = point.offset * to_canonical.scale + to_canonical.shift
    low, high = indicator.range if indicator.range is not None else (None, None)
    own = own_range(point, indicator)
    if own is not None:
        low, high = own
    return _shared_transform(scale, shift, low, high, point.invert, state_map(point, indicator))


def state_map(point: PointBase, indicator: Indicator) -> StateMap | None:
    """How the point's codes are named: its own `states:` onto the catalogue's, else the catalogue's codes."""
    if indicator.states is None:
        if point.states is not None:
            raise PointError("states", f"indicator {indicator.id!r} declares no named states in the catalogue; "
                                       "expected a multi-state indicator (kind state or alarm with `states:`)")
        return None
    if point.states is None:
        return _shared_states(tuple((s.code, s.code, s.id) for s in indicator.states))
    pairs = []
    for device_code, state_id in sorted(point.states.items()):
        state = indicator.state_named(state_id)
        if state is None:
            known = [s.id for s in indicator.states]
            close = difflib.get_close_matches(state_id, known, n=1, cutoff=0.6)
            raise PointError("states", f"unknown state {state_id!r} for code {device_code}; expected one of the "
                                       f"states of {indicator.id!r}: {', '.join(known)}"
                                       + (f" (did you mean {close[0]!r}?)" if close else ""))
        pairs.append((device_code, state.code, state.id))
    return _shared_states(tuple(pairs))


@functools.lru_cache(maxsize=1024)
def _shared_states(pairs: tuple[tuple[int, int, str], ...]) -> StateMap:
    return StateMap(pairs)


@functools.lru_cache(maxsize=4096)
def _shared_transform(scale: float, shift: float, low: float | None, high: float | None,
                      invert_boolean: bool = False, states: StateMap | None = None) -> Transform:
    return Transform(scale, shift, low, high, invert_boolean, states)


def own_range(point: PointBase, indicator: Indicator) -> tuple[float, float] | None:
    """The point's own valid range in the indicator's unit, when it gives one."""
    if point.range is None:
        return None
    to_canonical = units.conversion(point.unit or indicator.unit, indicator.unit)
    low, high = sorted((to_canonical.apply(point.range[0]), to_canonical.apply(point.range[1])))
    return low, high


@dataclass(frozen=True, slots=True)
class ResolvedPoint:
    config: PointBase  # the point as validated (its protocol's fields are the driver's business)
    indicator: Indicator
    transform: Transform
    rules: Processing  # the catalogue's rules for the indicator, with the point's overrides

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def valid_range(self) -> tuple[float, float] | None:
        """The range its readings are checked against, in the canonical unit: its own, else the catalogue's."""
        low, high = self.transform.low, self.transform.high
        return None if low is None or high is None else (low, high)


def resolve_point(point: PointBase, indicator: Indicator) -> ResolvedPoint:
    """Raises UnitError when the point's unit does not convert to the indicator's, PointError when one of its
    keys does not fit the indicator."""
    rules = _named_alarm_states(indicator.processing.overridden_by(point.processing), indicator)
    return ResolvedPoint(point, indicator, point_transform(point, indicator), rules)


def _named_alarm_states(rules: Processing, indicator: Indicator) -> Processing:
    """State alarms of a multi-state indicator may name the state (`state: manual`): they compare its code."""
    if indicator.states is None or not rules.alarms or not any(
            isinstance(rule.state, str) for rule in rules.alarms):
        return rules
    alarms = []
    for rule in rules.alarms:
        if isinstance(rule.state, str):
            state = indicator.state_named(rule.state)
            if state is None:
                raise PointError("processing", f"alarm state {rule.state!r} is not a state of {indicator.id!r}; "
                                               f"expected one of: {', '.join(s.id for s in indicator.states)}")
            rule = rule.model_copy(update={"state": state.code})
        alarms.append(rule)
    return rules.model_copy(update={"alarms": alarms})


@dataclass(frozen=True, slots=True)
class ResolvedDevice(Generic[D]):
    config: D  # the device as validated: what its driver reads
    asset: AssetRef
    points: tuple[ResolvedPoint, ...]  # in the order of config.points

    @property
    def id(self) -> str:
        return self.config.id


def resolve_device(device: D, catalogue: Catalogue) -> ResolvedDevice[D]:
    """Raises LookupError for an indicator the catalogue does not have, UnitError for a unit that does not convert.
    (The loader checks the same with the places in the files; this is for a device made in code.)"""
    points = []
    for point in device.points:
        indicator = catalogue.indicator(point.indicator)
        if indicator is None:
            raise LookupError(f"point {point.name!r}: indicator {point.indicator!r} is not in the catalogue")
        points.append(resolve_point(point, indicator))
    return ResolvedDevice(device, asset_ref(device), tuple(points))


@dataclass(frozen=True, slots=True)
class ResolvedDerived:
    """An indicator of an asset computed at the gateway (docs/processing.md)."""

    definition: DerivedIndicator
    indicator: Indicator
    expression: Expression | None  # compiled; None for a night minimum
    rules: Processing

    @property
    def inputs(self) -> frozenset[str]:
        return self.definition.inputs()


def resolve_derived(definition: DerivedIndicator, indicator: Indicator) -> ResolvedDerived:
    expression = parse(definition.expression) if definition.expression is not None else None
    return ResolvedDerived(definition, indicator, expression, indicator.processing.overridden_by(definition.processing))


@dataclass(frozen=True, slots=True)
class ResolvedAsset:
    """One asset: what it is, the enabled devices feeding it and the indicators derived at the gateway."""

    ref: AssetRef
    settings: AssetSettings
    type: AssetType | None
    devices: tuple[ResolvedDevice[DeviceBase], ...]
    derived: tuple[ResolvedDerived, ...]


def assets_of(devices: Sequence[ResolvedDevice[DeviceBase]], catalogue: Catalogue) -> tuple[ResolvedAsset, ...]:
    """Every asset the enabled `devices` feed, with those devices and the indicators derived for it
    (`derived:` of any of them, in the catalogue)."""
    grouped: dict[str, list[ResolvedDevice[DeviceBase]]] = {}
    for device in devices:
        if device.config.enabled:
            grouped.setdefault(device.asset.asset, []).append(device)
    assets = []
    for feeding in grouped.values():
        settings = feeding[0].config.asset
        derived = [resolve_derived(rule, indicator) for device in feeding for rule in device.config.derived
                   if (indicator := catalogue.indicator(rule.indicator)) is not None]
        assets.append(ResolvedAsset(feeding[0].asset, settings, catalogue.asset_type(settings.type),
                                    tuple(feeding), tuple(derived)))
    return tuple(assets)


@dataclass(frozen=True, slots=True)
class AttributeSource:
    """The attributes one device reads for its asset: a device of their own on the same link (`config`, its
    points the attribute points, polled every `attribute_interval`), named after the device it belongs to."""

    config: DeviceBase  # id `<device>#attributes`, never a device of its own in topics or status
    device: str
    asset: AssetRef
    attributes: tuple[tuple[str, Attribute], ...]  # (point name, catalogue attribute)

    @property
    def id(self) -> str:
        return self.config.id


ATTRIBUTES_SUFFIX = "#attributes"


def asset_ref(device: DeviceBase) -> AssetRef:
    return AssetRef(device.asset.domain, device.asset.site, device.asset.id)
