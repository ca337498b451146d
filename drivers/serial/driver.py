"""The driver of one shared bus: a serial port (or a serial device server over TCP) and every device on it.

All devices naming the same port form one link, so the gateway runs one task
per port and serves its devices in turn: never two requests on the bus at once.
A device that does not answer raises NoReply (link stays up), so the gateway
backs off that device alone and the others keep their rate. A port that fails
(adapter unplugged) raises LinkLost: the gateway closes the link and reopens it
with back-off.

Several protocols may share one port. Each device comes with the `BusDevice` of
its protocol, made by the registry (drivers/registry.py), so this module never
imports a protocol (a bus without Modbus never imports pymodbus).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from drivers.serial.bus import Bus
from drivers.serial.config import BusOverTcp, SerialDevice
from drivers.serial.device import BusDevice
from drivers.serial.frames import FrameCounters
from drivers.serial.stream import LinkLost, TcpStream
from gateway.model.devices import DeviceBase
from gateway.model.driver import LinkContext, Poller, Pusher, PushSink
from gateway.model.readings import Sample, Value


class FieldBusDriver(Poller[DeviceBase], Pusher[DeviceBase]):
    def __init__(self, devices: Sequence[DeviceBase], members: Sequence[BusDevice[Any]],
                 context: LinkContext | None = None) -> None:
        """`members`: the BusDevice of each device, in the same order."""
        super().__init__(devices, context)
        self.bus = _bus_for(self.devices)
        self._members: dict[str, BusDevice[Any]] = {m.device.id: m for m in members}
        for member in members:
            member.join(members, self.devices[0].link_id(), context)
        self.frame_counters: dict[str, FrameCounters] = {id_: m.frames for id_, m in self._members.items()}
        self._open = False

    @property
    def connected(self) -> bool:
        return self._open

    async def open(self) -> None:
        if not self._open:
            await self.bus.open()
            self._open = True

    async def close(self) -> None:
        self._open = False
        self.bus.close()

    async def read(self, device: DeviceBase) -> list[Sample]:
        self._require_open()
        return await self._members[device.id].read(self.bus)

    async def write(self, device: DeviceBase, point: str, value: Value) -> Value:
        self._require_open()
        return await self._members[device.id].write(self.bus, point, value)

    async def run(self, sink: PushSink[DeviceBase]) -> None:
        """Listen to the device that pushes until the bus fails (LinkLost)."""
        self._require_open()
        # A device that pushes has its port to itself (the loader checks it): there is exactly one.
        (member,) = (m for m in self._members.values() if m.device.pushes)
        await member.listen(self.bus, functools.partial(sink, member.device))

    def describe(self, device: DeviceBase) -> list[str]:
        return self._members[device.id].describe()

    def counters(self, device: DeviceBase) -> dict[str, int]:
        return self._members[device.id].counters()

    def _require_open(self) -> None:
        if not self._open:
            raise LinkLost(f"{self.bus.stream.name} is not open")


def _bus_for(devices: Sequence[DeviceBase]) -> Bus:
    first = devices[0]
    if isinstance(first, SerialDevice):
        from drivers.serial.port import SerialPort  # imports pyserial

        settings = first.serial
        return Bus(SerialPort(first.port, settings), settings.char_time, settings.frame_silence)
    if isinstance(first, BusOverTcp):
        stream = TcpStream(first.host, first.port, connect_timeout=max(device.timeout for device in devices))
        line = first.serial
        if line is None:  # the server is left to keep the line's timing
            return Bus(stream, char_time=0.0, silence=0.0)
        # The same silence and time on the wire as on a local port: bytes pass the server unchanged.
        return Bus(stream, line.char_time, line.frame_silence)
    raise TypeError(f"device {first.id} ({first.protocol}) names neither a serial port nor a device server")
