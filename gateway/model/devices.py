"""What every protocol's device and point configuration has; protocol packages subclass these."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Annotated, Self

from pydantic import AfterValidator, Field, model_validator

from gateway.model.expression import parse
from gateway.model.rules import DerivedIndicator, Processing
from gateway.model.schema import Id, PointName, Seconds, SecondsOrZero, StrictModel, check_range, record


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
    confirm_within: SecondsOrZero = Field(
        0.0, description="Seconds the device may take to reach a written value (a motorised valve's travel, a "
                         "ramped setpoint): when the read-back right after the write differs, the command waits "
                         "this long for a poll that reads the value. 0: the read-back alone decides.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        check_range(self.range)
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


_NUMBERS: dict[float, float] = {}


def _shared(number: float) -> float:
    """One float object for each scale or offset a site uses (0.1, 0.01 ...), not one per point."""
    if len(_NUMBERS) < 4096:
        return _NUMBERS.setdefault(number, number)
    return _NUMBERS.get(number, number)


SharedFloat = Annotated[float, AfterValidator(_shared)]
_INSTANCE = re.compile(r"^[a-z][a-z0-9-]*$")


def _instance_name(name: str) -> str:
    if len(name) > 64 or not _INSTANCE.match(name):
        raise ValueError("an instance name goes into ids and payloads beside the asset and indicator ids, and must "
                         "fit every topic layout: expected a lower-case letter, then a-z, 0-9 and '-' (no '/', '+', "
                         "'#', '[', ']', spaces or capitals), at most 64 characters")
    return sys.intern(name)


Instance = Annotated[str, AfterValidator(_instance_name)]


@record
class PointBase:
    """What every protocol's point has: which indicator it feeds and how its value becomes canonical.
    Protocols subclass it (each subclass a `@record` too)."""

    name: PointName
    indicator: Id
    unit: str | None = Field(None, description="Unit of the value after scale/offset; defaults to the indicator's.")
    scale: SharedFloat = 1.0
    offset: SharedFloat = 0.0
    range: tuple[float, float] | None = Field(
        None, description="Valid range in `unit`; outside it the reading is bad (out-of-range).")
    writable: bool = Field(False, description="Only writable points can ever be written to the device.")
    instance: Instance | None = Field(
        None, description="Tells several sources of one indicator of an asset apart (level: reservoir, wet-well); "
                          "derived expressions name one as level[wet-well].")
    invert: bool = Field(False, description="For a boolean: publish true where the device says false and back.")
    states: dict[int, Id] | None = Field(
        None, description="For a multi-state indicator: the device's codes, each mapped to a state id the "
                          "catalogue declares for the indicator; codes left out are published as unknown.")
    write: WriteLimits | None = Field(
        None, description="What may be written to a writable point: range or allowed values, step, minimum "
                          "interval, guard.")
    processing: Processing | None = Field(
        None, description="Report by exception, windows, counter and alarms; each key given replaces the "
                          "catalogue's default for the indicator (docs/processing.md).")

    @model_validator(mode="after")
    def _ordered_range(self) -> Self:
        check_range(self.range)
        if self.write is not None and not self.writable:
            raise ValueError("`write:` limits are given but the point is not `writable: true`")
        return self

    @property
    def decodes_boolean(self) -> bool:
        """Whether the protocol decodes this point to true/false (a coil, a bit of a register); False when
        only the device can tell (an OPC-UA node)."""
        return False


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
    drop: list[PointName] = Field(
        default_factory=list, description="Points of the profile this device leaves out, by name (needs `profile:`).")
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
