"""The configuration as the running gateway uses it: every point with its catalogue indicator, its compiled
conversion and its processing rules, every asset with its devices and derived indicators.

The loader (gateway/config/) validates the files, resolves them into these objects and runs every check
across them; the stages build their runtime state from these and never look an indicator up again.
The functions here are pure: given a valid catalogue entry they resolve one point or one derived
indicator, and raise ValueError (a UnitError for units) for what cannot be resolved.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic

from gateway.model import units
from gateway.model.catalogue import AssetType, Catalogue, Indicator
from gateway.model.devices import AssetSettings, DeviceBase, PointBase
from gateway.model.driver import D
from gateway.model.expression import Expression, parse
from gateway.model.readings import AssetRef, Value
from gateway.model.rules import DerivedIndicator, Processing


@dataclass(frozen=True, slots=True)
class Transform:
    """From a driver's value to the indicator's canonical unit: value * scale + shift, then the valid range.

    Scale, offset and unit conversion are folded into one multiply and one add; an identity transform
    keeps integers exact (a 64-bit totaliser does not fit a float).
    """

    scale: float
    shift: float
    low: float | None  # valid range in the canonical unit
    high: float | None

    @property
    def keeps_integers(self) -> bool:
        return self.scale == 1.0 and self.shift == 0.0

    def convert(self, raw: Value) -> tuple[Value, bool]:
        """(canonical value, within range); states and text pass unchanged."""
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return raw, True
        value: float | int = raw if self.keeps_integers else raw * self.scale + self.shift
        in_range = (self.low is None or value >= self.low) and (self.high is None or value <= self.high)
        return value, in_range

    def invert(self, canonical: float) -> float:
        """The driver's value that `convert` turns into `canonical` (what to write to get it)."""
        return (canonical - self.shift) / self.scale


def point_transform(point: PointBase, indicator: Indicator) -> Transform:
    """The point's transform to `indicator`; raises UnitError when its unit does not convert.
    Equal transforms are one object (a site's many devices of one model have the same ones)."""
    to_canonical = units.conversion(point.unit or indicator.unit, indicator.unit)
    scale = point.scale * to_canonical.scale
    shift = point.offset * to_canonical.scale + to_canonical.shift
    low, high = indicator.range if indicator.range is not None else (None, None)
    own = own_range(point, indicator)
    if own is not None:
        low, high = own
    return _shared_transform(scale, shift, low, high)


@functools.lru_cache(maxsize=4096)
def _shared_transform(scale: float, shift: float, low: float | None, high: float | None) -> Transform:
    return Transform(scale, shift, low, high)


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
    """Raises UnitError when the point's unit does not convert to the indicator's."""
    rules = indicator.processing.overridden_by(point.processing)
    return ResolvedPoint(point, indicator, point_transform(point, indicator), rules)


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


def asset_ref(device: DeviceBase) -> AssetRef:
    return AssetRef(device.asset.domain, device.asset.site, device.asset.id)
