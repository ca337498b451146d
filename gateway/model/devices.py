"""What every protocol's device and point configuration has; protocol packages subclass these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

from pydantic import Field, model_validator

from gateway.model.expression import parse
from gateway.model.rules import DerivedIndicator, Processing
from gateway.model.schema import Id, PointName, Seconds, SecondsOrZero, StrictModel, record


class WriteLimits(StrictModel):
    """What may be written to a writable point (docs: README, Commands). Numbers are in the point's `unit`."""

    range: tuple[float, float] | None = Field(
        None, description="[low, high] a written number must lie in; required for a writable number.")
    allowed: list[bool | int | str] | None = Field(
        None, description="The values a writable state may be set to (e.g. [0, 1, 2] for a mode).")
    step: float | None = Field(None, gt=0, description="A written number must be low + n * step.")
    min_interval: SecondsOrZero = Field(1.0, description="Seconds at least between two writes to the point.")
    guard: str | None = Field(
        None, description="A condition over the asset's current readings, in the derived-indicator language "
                          "(e.g. 'wet-well-level > 1.2'); the write is refused unless it holds on good, "
                          "fresh readings.")
    guard_max_age: Seconds = Field(60.0, description="Seconds a guard's input may be old; older refuses.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range must be [low, high], found [{self.range[0]}, {self.range[1]}]")
        if self.range is not None and self.allowed is not None:
            raise ValueError("give range (a number) or allowed (a state), not both")
        if self.step is not None and self.range is None:
            raise ValueError("step needs a range (the steps count from its low end)")
        if self.allowed is not None and not self.allowed:
            raise ValueError("allowed must name at least one value")
        if self.guard is not None:
            parse(self.guard)  # raises ValueError naming the position of the problem
        return self

    def guard_inputs(self) -> frozenset[str]:
        return parse(self.guard).names if self.guard is not None else frozenset()


class AssetSettings(StrictModel):
    domain: Id
    site: Id
    id: Id
    type: Id = Field(description="An asset type from the catalogue.")
    name: str = ""


@record
class PointBase:
    """What every protocol's point has: which indicator it feeds and how its value becomes canonical.
    Protocols subclass it (each subclass a `@record` too)."""

    name: PointName
    indicator: Id
    unit: str | None = Field(None, description="Unit of the value after scale/offset; defaults to the indicator's.")
    scale: float = 1.0
    offset: float = 0.0
    range: tuple[float, float] | None = Field(
        None, description="Valid range in `unit`; outside it the reading is bad (out-of-range).")
    writable: bool = Field(False, description="Only writable points can ever be written to the device.")
    write: WriteLimits | None = Field(
        None, description="What may be written to a writable point: range or allowed values, step, minimum "
                          "interval, guard.")
    processing: Processing | None = Field(
        None, description="Report by exception, windows, counter and alarms; each key given replaces the "
                          "catalogue's default for the indicator (docs/processing.md).")

    @model_validator(mode="after")
    def _ordered_range(self) -> Self:
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range must be [low, high], found [{self.range[0]}, {self.range[1]}]")
        if self.write is not None and not self.writable:
            raise ValueError("`write:` limits are given but the point is not `writable: true`")
        return self


class SupervisionSettings(StrictModel):
    """When a device's own alarms are raised (docs/processing.md). A key left out keeps the default; null: never."""

    communication_loss: Seconds | None = Field(
        None, description="Seconds every attempt to reach the device may fail before communication-loss is raised; "
                          "default max(60 s, 3 polls).")
    stale_after: Seconds | None = Field(
        None, description="Seconds without a good value from the device before stale-data is raised; default "
                          "max(300 s, 10 polls) for a polled device, never for one that pushes.")

    def given(self, key: str) -> bool:
        """Whether the file sets `key` (to a number, or to null for never)."""
        return key in self.model_fields_set


class DeviceBase(StrictModel):
    """What every protocol's device has. Protocol modules subclass it with their connection and points."""

    id: Id
    protocol: str
    asset: AssetSettings
    profile: str | None = Field(None, description="A device profile (register map) under the profiles directory.")
    enabled: bool = True
    poll_interval: Seconds = Field(10.0, description="Seconds between polls.")
    timeout: Seconds = Field(3.0, description="Seconds to wait for one reply.")
    backoff_max: Seconds = Field(300.0, description="Longest wait between retries of a failing device.")
    points: Sequence[PointBase]  # protocols narrow it to their own point model
    derived: list[DerivedIndicator] = Field(
        default_factory=list,
        description="Indicators of this device's asset computed from others (see docs/processing.md).")
    supervision: SupervisionSettings | None = Field(
        None, description="When communication-loss and stale-data are raised for this device (docs/processing.md).")

    def link_id(self) -> str:
        """Devices with the same link id share one physical connection, served by one task."""
        return f"device:{self.id}"

    @property
    def pushes(self) -> bool:
        """True for a device that sends its values unasked (its driver is then a pusher), False when polled."""
        return False

    @classmethod
    def link_conflicts(cls, devices: Sequence[DeviceBase]) -> list[tuple[DeviceBase, str, str]]:
        """(device, key, problem) for each device that cannot share its link with the others as configured.

        The loader calls this once per group of devices with the same link id, so a protocol can
        check what only makes sense across devices (one baud rate per serial port, one address per slave).
        """
        return []
