"""The shared metadata model as it travels through the daemon.

A driver produces `Sample`s (one value of one configured point, in the device's
own unit). The mapping stage turns each sample into a `Reading`: the value of
one catalogue indicator of one asset, in the indicator's canonical unit, with
quality and time. Everything downstream of mapping (processing, buffer,
publisher) only ever sees readings.
"""

from __future__ import annotations

import datetime
import enum
import time
from dataclasses import dataclass

Value = float | int | bool | str | None


class Quality(enum.StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Reason(enum.StrEnum):
    """Short, stable reasons for a quality other than good."""

    COMMUNICATION = "communication-failure"
    DEVICE_EXCEPTION = "device-exception"
    DECODE_ERROR = "decode-error"
    OUT_OF_RANGE = "out-of-range"
    SENSOR_FAULT = "sensor-fault"
    SUBSTITUTED = "substituted"
    STALE = "stale"
    NOT_FOUND = "not-found"
    CALCULATION = "calculation-error"  # a derived indicator could not be computed
    UNKNOWN_STATE = "unknown-state"  # a multi-state code the configuration does not name


def series_key(indicator: str, instance: str | None) -> str:
    """How processing, alarm ids and derived expressions name one source of an indicator: `level`, or
    `level[wet-well]` for one of several instances of it on an asset."""
    return indicator if instance is None else f"{indicator}[{instance}]"


def now_ms() -> int:
    """Wall-clock UTC time in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def format_time_ms(ms: int) -> str:
    """ISO 8601 UTC with milliseconds, for people."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class AssetRef:
    """Where a reading belongs: domain, site and asset ids (lower-case a-z0-9-)."""

    domain: str
    site: str
    asset: str

    def path(self) -> str:
        return f"{self.domain}/{self.site}/{self.asset}"


# Samples and readings are made for every point of every poll: slotted, and not frozen, because a frozen
# dataclass's __init__ sets each field through object.__setattr__, which costs four times as much (1.3 against
# 0.34 us for a Reading). Nothing changes one once made: a change is a new one (dataclasses.replace).
@dataclass(slots=True)
class Sample:
    """One point as a driver read it: value after decoding, before scaling and unit conversion.

    `value` is None exactly when `quality` is BAD for a reason that left no value
    (no answer, exception, undecodable bytes).
    """

    point: str
    value: Value
    quality: Quality = Quality.GOOD
    reason: str | None = None
    source_time_ms: int | None = None


@dataclass(slots=True)
class Reading:
    """One value of one indicator of one asset at one time, in the canonical unit."""

    asset: AssetRef
    indicator: str
    value: Value
    unit: str
    unit_code: str
    quality: Quality
    reason: str | None
    source_time_ms: int
    receive_time_ms: int
    device: str
    point: str
    state: str | None = None  # the state id of a multi-state indicator's code
    instance: str | None = None  # which of several sources of the indicator on the asset

    @property
    def series(self) -> str:
        """`indicator`, or `indicator[instance]`: the name derived expressions use."""
        return self.indicator if self.instance is None else f"{self.indicator}[{self.instance}]"

    def as_payload(self, seq: int) -> dict[str, object]:
        """The JSON shape of one reading inside a batch (documented in README)."""
        if self.instance is None and self.state is None:  # most readings: one literal, the hot path
            plain: dict[str, object] = {
                "seq": seq, "indicator": self.indicator, "value": self.value, "unit": self.unit,
                "unit_code": self.unit_code, "quality": self.quality.value, "ts": self.source_time_ms,
                "rx": self.receive_time_ms, "device": self.device, "point": self.point}
            if self.reason is not None:
                plain["reason"] = self.reason
            return plain
        body: dict[str, object] = {"seq": seq, "indicator": self.indicator}
        if self.instance is not None:
            body["instance"] = self.instance
        body["value"] = self.value
        if self.state is not None:
            body["state"] = self.state
        body["unit"] = self.unit
        body["unit_code"] = self.unit_code
        body["quality"] = self.quality.value
        body["ts"] = self.source_time_ms
        body["rx"] = self.receive_time_ms
        body["device"] = self.device
        body["point"] = self.point
        if self.reason is not None:
            body["reason"] = self.reason
        return body
