"""The driver of one shared bus: a serial port (or a serial device server over TCP) and every device on it.

All devices naming the same port form one link, so the scheduler runs one task
per port and serves its devices in turn: never two requests on the bus at once.
A device that does not answer raises NoReply (link stays up), so the scheduler
backs off that device alone and the others keep their rate. A port that fails
(adapter unplugged) raises LinkLost: the scheduler closes the link and reopens
it on the next due poll, with each device's back-off spacing the attempts.

Several protocols may share one port; each device gets the `BusDevice` of its
protocol, imported only when configured (a bus without Modbus never imports pymodbus).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from drivers.serial.bus import Bus
from drivers.serial.config import SerialDevice, port_conflicts
from drivers.serial.device import BusDevice
from drivers.serial.frames import FrameCounters
from drivers.serial.stream import ByteStream, LinkLost, TcpStream
from gateway.model.devices import DeviceBase
from gateway.model.driver import Driver, SampleSink
from gateway.model.readings import Sample, Value

# Protocol → its BusDevice class ("module:Class"), imported when a device uses it.
_BUS_DEVICES = {
    "modbus-rtu": "drivers.modbus.rtu:ModbusRtuBusDevice",
    "modbus-rtu-over-tcp": "drivers.modbus.rtu:ModbusRtuBusDevice",
    "cjt188": "drivers.cjt188.meter:Cjt188Meter",
    "dlt645": "drivers.dlt645.meter:Dlt645Meter",
    "ascii-line": "drivers.asciiline.sensor:AsciiLineSensor",
}


class FieldBusDriver(Driver):
    """Raises ValueError for devices that cannot share the bus as configured (the loader reports it)."""

    def __init__(self, devices: Sequence[DeviceBase]) -> None:
        super().__init__(devices)
        if not devices:
            raise ValueError("a bus needs at least one device")
        link = devices[0].link_id()
        for device in devices:
            if device.link_id() != link:
                raise ValueError(f"device {device.id} is on {device.link_id()}, not {link}")
            if device.protocol not in _BUS_DEVICES:
                raise ValueError(f"device {device.id}: protocol {device.protocol} does not run on a serial bus")
        problems = port_conflicts(devices)
        if problems:
            raise ValueError("; ".join(problem for _, problem in problems))
        self.bus = _bus_for(devices[0], devices)
        self._devices: dict[str, BusDevice] = {device.id: _bus_device(device) for device in devices}
        self.frame_counters: dict[str, FrameCounters] = {id_: d.frames for id_, d in self._devices.items()}
        self._open = False

    @property
    def connected(self) -> bool:
        return self._open

    async def connect(self) -> None:
        if not self._open:
            await self.bus.open()
            self._open = True

    async def close(self) -> None:
        for device in self._devices.values():
            device.unsubscribe()
        self._open = False
        self.bus.close()

    async def read(self, device: DeviceBase) -> list[Sample]:
        bus_device = self._device(device)
        if not self._open:
            raise LinkLost(f"{self.bus.stream.name} is not open")
        return await bus_device.read(self.bus)

    async def write(self, device: DeviceBase, point: str, value: Value) -> None:
        bus_device = self._device(device)
        if not self._open:
            raise LinkLost(f"{self.bus.stream.name} is not open")
        await bus_device.write(self.bus, point, value)

    async def subscribe(self, device: DeviceBase, sink: SampleSink) -> bool:
        return await self._device(device).subscribe(self.bus, lambda samples: sink(device, samples))

    def describe_requests(self, device: DeviceBase) -> list[str]:
        return self._device(device).describe()

    def device_counters(self, device: DeviceBase) -> dict[str, int]:
        return self._device(device).counters()

    def _device(self, device: DeviceBase) -> BusDevice:
        found = self._devices.get(device.id)
        if found is None:
            raise ValueError(f"device {device.id} is not on {self.bus.stream.name}")
        return found


def _bus_for(first: DeviceBase, devices: Sequence[DeviceBase]) -> Bus:
    stream: ByteStream
    if isinstance(first, SerialDevice):
        from drivers.serial.port import SerialPort  # imports pyserial

        settings = first.serial
        stream = SerialPort(first.port, settings)
        return Bus(stream, settings.char_time, settings.frame_silence)
    host, port = getattr(first, "host", None), getattr(first, "port", None)
    if not isinstance(host, str) or not isinstance(port, int):
        raise ValueError(f"device {first.id}: no serial port and no device server address")
    # A serial device server keeps the line's timing itself; the TCP side needs no silence.
    stream = TcpStream(host, port, connect_timeout=max(device.timeout for device in devices))
    return Bus(stream, char_time=0.0, silence=0.0)


def _bus_device(device: DeviceBase) -> BusDevice:
    module_name, _, class_name = _BUS_DEVICES[device.protocol].partition(":")
    cls: Any = getattr(importlib.import_module(module_name), class_name)
    bus_device: BusDevice = cls(device)
    return bus_device
