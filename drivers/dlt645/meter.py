"""A DL/T 645-2007 electricity meter on a shared bus: one read (function 11H) per identifier per poll.

An abnormal reply (D1H) makes that identifier's points bad with reason
``device-exception:XX``, XX the meter's error byte (02 no requested data, 04
unauthorised, ...), like Modbus exception replies. A reply whose value is not
BCD of the expected length makes those points bad (decode-error). Values of the
built-in identifiers are converted from the meter's unit (kWh, V ...) to the
point's unit.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

from drivers.dlt645 import frames
from drivers.dlt645.config import Dlt645Meter as Dlt645Settings
from drivers.serial.bus import Bus, NoReply
from drivers.serial.device import BusDevice
from drivers.serial.frames import FrameCounters, address_bytes, address_text
from drivers.serial.scan import Found, Progress, ScanOptions
from gateway.model import units
from gateway.model.readings import Quality, Reason, Sample

log = logging.getLogger(__name__)

PROBE_WAKE_UP = 4  # FE bytes before the scan's probe: a sleeping meter's UART needs them to wake


@dataclass(frozen=True, slots=True)
class _PointReader:
    """One point's value: its name, how it travels, and the conversion to the point's unit."""

    name: str
    format: frames.DataFormat
    conversion: units.Conversion


class Dlt645Meter(BusDevice[Dlt645Settings]):
    def __init__(self, device: Dlt645Settings) -> None:
        super().__init__(device)
        self._address = address_bytes(device.address)
        # Points sharing one identifier (e.g. the same value feeding two indicators) share one request.
        self._by_identifier: dict[int, list[_PointReader]] = defaultdict(list)
        for point in device.points:
            reader = _PointReader(point.name, point.data_format(), point.conversion())
            self._by_identifier[point.identifier].append(reader)

    def describe(self) -> list[str]:
        return [f"read {self._name(identifier)} ({len(points)} point{'s' if len(points) > 1 else ''})"
                for identifier, points in self._by_identifier.items()]

    def _name(self, identifier: int) -> str:
        return f"{identifier:04X}" if self.device.edition == "1997" else f"{identifier:08X}"

    async def read(self, bus: Bus) -> list[Sample]:
        by_name: dict[str, Sample] = {}
        for identifier, points in self._by_identifier.items():
            for sample in await self._read_identifier(bus, identifier, points):
                by_name[sample.point] = sample
        return [by_name[point.name] for point in self.device.points]

    async def _read_identifier(self, bus: Bus, identifier: int, points: list[_PointReader]) -> list[Sample]:
        device = self.device
        request = frames.read_request(self._address, identifier, device.edition)
        what = f"read {self._name(identifier)} from meter {device.address}"
        reply = await bus.exchange(frames.encode(request, device.wake_up), frames.reply_parser(request),
                                   device.timeout, self.frames, what=what)
        if reply.abnormal:
            error = reply.error or 0
            log.debug("meter %s refused %s: %s", device.id, self._name(identifier),
                      frames.ERROR_NAMES.get(error, f"error {error:02X}"))
            self.replies.exception_replies += 1
            return [_bad(point.name, f"{Reason.DEVICE_EXCEPTION.value}:{error:02X}") for point in points]
        samples = []
        for point in points:
            try:
                value = frames.decode_value(reply.data[len(request.data):], point.format)
            except frames.FormatError as exc:
                log.debug("meter %s, %s: %s", device.id, self._name(identifier), exc)
                self.replies.decode_errors += 1
                samples.append(_bad(point.name, Reason.DECODE_ERROR.value))
                continue
            samples.append(Sample(point.name, point.conversion.apply(value)))
        return samples


def _bad(name: str, reason: str) -> Sample:
    return Sample(name, None, Quality.BAD, reason)


async def probe(bus: Bus, options: ScanOptions, counters: FrameCounters, progress: Progress) -> list[Found]:
    """A lone DL/T 645 meter, asked for its address with the wildcard address."""
    request = frames.read_address_request()
    progress(f"DL/T 645: read address (13H) with the wildcard address AAAAAAAAAAAA, {PROBE_WAKE_UP} wake-up bytes")
    try:
        reply = await bus.exchange(frames.encode(request, PROBE_WAKE_UP), frames.reply_parser(request),
                                   options.reply_timeout,
                                   counters, what="DL/T 645 read address")
    except NoReply:
        return []
    return [Found("dlt645", f"address {address_text(reply.address)}")]
