"""Configuration of ASCII line devices: a request string answered by one line, or lines pushed unasked.
Imports no vendor library.

`pattern` is a regular expression with named groups; each point takes the
group of its name (or `group:`). A line that does not match is counted and
skipped. Numbers then get the point's scale, offset, unit and range as usual.
"""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import Field, model_validator

from drivers.serial.config import BusOverTcp, OnBus, SerialDevice
from gateway.model.devices import PointBase
from gateway.model.schema import record


@record
class AsciiPoint(PointBase):
    group: str | None = Field(None, description="Named group of the pattern; defaults to the point name.")
    type: Literal["number", "text"] = "number"

    @property
    def group_name(self) -> str:
        return self.group or self.name


class AsciiLine(OnBus):
    """A device speaking text lines, wherever its bus is: the settings both kinds of bus share."""

    request: str | None = Field(None, description='Sent to ask for a line, e.g. "R\\r\\n"; absent: the '
                                                  'device pushes lines by itself.')
    pattern: str = Field(description="Regular expression with named groups, searched in each line.")
    terminator: str = Field("\n", min_length=1, description="End of a line; a \\r before it is dropped too.")
    encoding: Literal["ascii", "latin-1", "utf-8"] = "ascii"
    points: list[AsciiPoint]

    @model_validator(mode="after")
    def _groups_exist(self) -> Self:
        try:
            compiled = re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern is not a regular expression: {exc}") from exc
        missing = [p.group_name for p in self.points if p.group_name not in compiled.groupindex]
        if missing:
            raise ValueError(f"pattern has no named group {', '.join(map(repr, missing))}; "
                             f"expected one of: {', '.join(compiled.groupindex) or '(none)'}")
        return self

    @property
    def pushes(self) -> bool:
        """Without a request to send, the sensor sends lines by itself."""
        return self.request is None

    def needs_port_alone(self) -> bool:
        return self.pushes


class AsciiLineDevice(AsciiLine, SerialDevice):
    """A text-line device on a local serial port."""

    protocol: Literal["ascii-line"]


class AsciiLineOverTcpDevice(AsciiLine, BusOverTcp):
    """A text-line device on the serial line of a serial device server (transparent TCP)."""

    protocol: Literal["ascii-line-over-tcp"]
