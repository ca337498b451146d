"""Mapping: a driver's samples become readings of the shared metadata model.

Each resolved point already carries its indicator and one linear transform (scale,
offset and unit conversion folded together, gateway/model/resolved.py), so the hot
path is a multiply, an add and the range check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gateway.model.devices import DeviceBase
from gateway.model.readings import Quality, Reading, Reason, Sample
from gateway.model.resolved import ResolvedDevice, ResolvedPoint


class DeviceMapper:
    """Turns the samples of one device into readings of its asset."""

    def __init__(self, device: ResolvedDevice[DeviceBase]) -> None:
        self.device_id = device.id
        self.asset = device.asset
        self.points: dict[str, ResolvedPoint] = {point.name: point for point in device.points}
        self.out_of_range = 0

    def readings(self, samples: Sequence[Sample], receive_time_ms: int) -> list[Reading]:
        # The hot path (every point of every poll): names bound once per batch rather than looked up per sample.
        readings: list[Reading] = []
        append, points, asset, device_id = readings.append, self.points, self.asset, self.device_id
        isfinite = math.isfinite
        for sample in samples:
            point = points.get(sample.point)
            if point is None:
                continue  # a driver never reports unconfigured points; ignore rather than guess an indicator
            transform = point.transform
            state = None
            if transform.states is None:
                value, in_range = transform.convert(sample.value)
            else:  # a named code is the catalogue's, so in range
                value, state = transform.states.name(sample.value)
                in_range = state is not None or transform.convert(value)[1]
            quality, reason = sample.quality, sample.reason
            if isinstance(value, float) and not isfinite(value):
                value, quality, reason = None, Quality.BAD, Reason.DECODE_ERROR.value
            elif not in_range and quality is not Quality.BAD:
                quality, reason = Quality.BAD, Reason.OUT_OF_RANGE.value
                self.out_of_range += 1
            elif state is None and transform.states is not None and quality is Quality.GOOD and value is not None:
                quality, reason = Quality.UNCERTAIN, Reason.UNKNOWN_STATE.value
            indicator = point.indicator
            append(Reading(asset, indicator.id, value, indicator.unit, indicator.unit_code, quality, reason,
                           sample.source_time_ms or receive_time_ms, receive_time_ms, device_id, sample.point, state,
                           point.config.instance))
        return readings

    def failed(self, reason: str, receive_time_ms: int) -> list[Reading]:
        """Bad readings for every point, for a poll that got no answer at all."""
        return self.readings([Sample(p, None, Quality.BAD, reason) for p in self.points], receive_time_ms)
