"""Mapping: a driver's samples become readings of the shared metadata model.

For each configured point this precomputes, once, the asset, the indicator,
the canonical unit and one linear transformation (scale, offset and unit
conversion folded together), so the hot path is a multiply and an add.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.model import units
from gateway.model.catalogue import Catalogue
from gateway.model.devices import DeviceBase, PointBase
from gateway.model.readings import AssetRef, Quality, Reading, Reason, Sample, Value


@dataclass(frozen=True, slots=True)
class PointMapping:
    indicator: str
    unit: str
    unit_code: str
    scale: float  # canonical = raw * scale + shift
    shift: float
    low: float | None  # valid range in the canonical unit
    high: float | None
    keep_integers: bool  # an identity transform keeps integer counters exact

    def convert(self, raw: Value) -> tuple[Value, bool]:
        """(canonical value, within range)."""
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return raw, True
        value: float | int = raw if self.keep_integers else raw * self.scale + self.shift
        in_range = (self.low is None or value >= self.low) and (self.high is None or value <= self.high)
        return value, in_range


def point_mapping(point: PointBase, catalogue: Catalogue) -> PointMapping:
    indicator = catalogue.indicator(point.indicator)
    if indicator is None:  # the loader has already rejected this; keep the failure loud if it ever happens
        raise LookupError(f"indicator {point.indicator!r} is not in the catalogue")
    to_canonical = units.conversion(point.unit or indicator.unit, indicator.unit)
    scale = point.scale * to_canonical.scale
    shift = point.offset * to_canonical.scale + to_canonical.shift
    low: float | None = None
    high: float | None = None
    valid = point.range
    if valid is not None:
        low, high = sorted((to_canonical.apply(valid[0]), to_canonical.apply(valid[1])))
    elif indicator.range is not None:
        low, high = indicator.range
    return PointMapping(indicator.id, indicator.unit, indicator.unit_code, scale, shift, low, high,
                        keep_integers=scale == 1.0 and shift == 0.0)


def asset_of(device: DeviceBase) -> AssetRef:
    return AssetRef(device.asset.domain, device.asset.site, device.asset.id)


class DeviceMapper:
    """Turns the samples of one device into readings of its asset."""

    def __init__(self, device: DeviceBase, catalogue: Catalogue) -> None:
        self.device_id = device.id
        self.asset = asset_of(device)
        self.points = {p.name: point_mapping(p, catalogue) for p in device.points}
        self.out_of_range = 0

    def readings(self, samples: Sequence[Sample], receive_time_ms: int) -> list[Reading]:
        readings = []
        for sample in samples:
            mapping = self.points.get(sample.point)
            if mapping is None:
                continue  # a driver never reports unconfigured points; ignore rather than guess an indicator
            value, in_range = mapping.convert(sample.value)
            quality, reason = sample.quality, sample.reason
            if isinstance(value, float) and not math.isfinite(value):
                value, quality, reason = None, Quality.BAD, Reason.DECODE_ERROR.value
            elif not in_range and quality is not Quality.BAD:
                quality, reason = Quality.BAD, Reason.OUT_OF_RANGE.value
                self.out_of_range += 1
            readings.append(Reading(
                self.asset, mapping.indicator, value, mapping.unit, mapping.unit_code, quality, reason,
                sample.source_time_ms or receive_time_ms, receive_time_ms, self.device_id, sample.point))
        return readings

    def failed(self, reason: str, receive_time_ms: int) -> list[Reading]:
        """Bad readings for every point, for a poll that got no answer at all."""
        return self.readings([Sample(p, None, Quality.BAD, reason) for p in self.points], receive_time_ms)
