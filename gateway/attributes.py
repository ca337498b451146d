"""Static attributes of assets: what a device reads at connect and then rarely, for the self-description.

An attribute is never a reading: its value (text or a number, as the device gives it) is kept here, per
asset, and the asset's retained self-description is published again when one changes. A failed read keeps
the last value known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.model.readings import Quality, Sample, Value
from gateway.model.resolved import AttributeSource


@dataclass(frozen=True, slots=True)
class _Known:
    value: Value
    read_ms: int


class AttributeBoard:
    """The attributes every asset has had read, by asset id; the order is that of the configuration."""

    def __init__(self, sources: Sequence[AttributeSource]) -> None:
        self._sources = {source.id: source for source in sources}
        self._known: dict[str, dict[str, _Known]] = {}  # asset id -> attribute id -> last good value

    def reads(self, device_id: str) -> bool:
        """Whether `device_id` is the attribute reader of some device (not a device of its own)."""
        return device_id in self._sources

    def update(self, device_id: str, samples: Sequence[Sample], receive_time_ms: int) -> str | None:
        """Take one read of an attribute device; the asset id when an attribute's value changed, else None."""
        source = self._sources[device_id]
        names = dict(source.attributes)
        known = self._known.setdefault(source.asset.asset, {})
        changed = False
        for sample in samples:
            attribute = names.get(sample.point)
            if attribute is None or sample.quality is Quality.BAD or sample.value is None:
                continue
            value = _scaled(sample.value, source, sample.point)
            previous = known.get(attribute.id)
            if previous is None or previous.value != value:
                changed = True
            known[attribute.id] = _Known(value, sample.source_time_ms or receive_time_ms)
        return source.asset.asset if changed else None

    def described(self, asset_id: str) -> list[dict[str, object]]:
        """The asset's attributes for its self-description: those read so far, each with where it came from."""
        known = self._known.get(asset_id, {})
        described: list[dict[str, object]] = []
        for source in self._sources.values():
            if source.asset.asset != asset_id:
                continue
            for point, attribute in source.attributes:
                value = known.get(attribute.id)
                if value is not None:
                    described.append({"id": attribute.id, "name": attribute.name.model_dump(), "value": value.value,
                                      "read": value.read_ms, "device": source.device, "point": point})
        return described


def _scaled(value: Value, source: AttributeSource, point_name: str) -> Value:
    """A number with its point's scale and offset applied (a version register in tenths); text unchanged."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    point = next(p for p in source.config.points if p.name == point_name)
    if point.scale == 1.0 and point.offset == 0.0:
        return value
    return value * point.scale + point.offset
