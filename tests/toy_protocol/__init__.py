"""A protocol as small as one can be, to show what adding one takes: this package and one registration line.

A toy "device" is a counter that advances on every read; its configuration says where it starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from gateway.model.devices import DeviceBase, PointBase
from gateway.model.driver import LinkContext, Poller
from gateway.model.readings import Sample
from gateway.model.schema import record


@record
class ToyPoint(PointBase):
    step: int = Field(1, description="How much the counter advances per read.")


class ToyDevice(DeviceBase):
    protocol: Literal["toy"]
    start: int = 0
    points: list[ToyPoint]


class ToyDriver(Poller[ToyDevice]):
    def __init__(self, devices: Sequence[ToyDevice], context: LinkContext | None = None) -> None:
        super().__init__(devices, context)
        self._reads = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def read(self, device: ToyDevice) -> list[Sample]:
        self._reads += 1
        return [Sample(point.name, device.start + self._reads * point.step) for point in device.points]
