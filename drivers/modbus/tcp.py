"""Modbus TCP driver: the devices behind one host:port (one unit id each), over one connection.

Polling by plan, splitting on exception 02 and the reasons put on bad samples
are shared with Modbus RTU: see polling.py. Here only the link is specific.

No reply in time, a lost connection or bytes that cannot be framed: `read()`
raises DriverError (ReplyTimeout for a timeout). The scheduler marks the whole
device bad, backs off and calls `connect()` again before the next poll.

`counters[device_id]` counts requests sent, exception replies, decode errors
and timeouts per device, for the status report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from drivers.modbus.client import TcpLink
from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.polling import DeviceCounters, ModbusDevicePoller, exception_reason
from gateway.model.devices import DeviceBase
from gateway.model.driver import Driver, DriverError
from gateway.model.readings import Sample, Value

__all__ = ["DeviceCounters", "ModbusTcpDriver", "exception_reason"]


class ModbusTcpDriver(Driver):
    """All devices of one Modbus TCP host:port. Raises ValueError for devices that cannot share it
    or whose points cannot be planned (the loader reports it)."""

    def __init__(self, devices: Sequence[DeviceBase]) -> None:
        super().__init__(devices)
        tcp_devices = [_as_tcp(device) for device in devices]
        if not tcp_devices:
            raise ValueError("a Modbus TCP link needs at least one device")
        first = tcp_devices[0]
        for device in tcp_devices:
            if device.link_id() != first.link_id():
                raise ValueError(f"device {device.id} is on {device.link_id()}, not {first.link_id()}")
        self._pollers = {device.id: ModbusDevicePoller(device) for device in tcp_devices}
        self.counters = {device_id: poller.counters for device_id, poller in self._pollers.items()}
        self._link = TcpLink(first.host, first.port, timeout=max(device.timeout for device in tcp_devices),
                             unit_timeouts={device.unit_id: device.timeout for device in tcp_devices})

    @property
    def connected(self) -> bool:
        return self._link.connected

    async def connect(self) -> None:
        if not self._link.connected:
            await self._link.connect()

    async def close(self) -> None:
        self._link.close()

    def describe_requests(self, device: DeviceBase) -> list[str]:
        return self._poller(device).describe()

    def device_counters(self, device: DeviceBase) -> dict[str, int]:
        return dataclasses.asdict(self.counters[device.id])

    async def read(self, device: DeviceBase) -> list[Sample]:
        poller = self._poller(device)
        if not self._link.connected:
            raise DriverError(f"not connected to {self._link.host}:{self._link.port}")
        return await poller.read(self._link)

    async def write(self, device: DeviceBase, point: str, value: Value) -> None:
        await self._poller(device).write(self._link, point, value)

    def _poller(self, device: DeviceBase) -> ModbusDevicePoller:
        poller = self._pollers.get(device.id)
        if poller is None:
            raise ValueError(f"device {device.id} is not on this Modbus TCP link")
        return poller


def _as_tcp(device: DeviceBase) -> ModbusTcpDevice:
    if not isinstance(device, ModbusTcpDevice):
        raise ValueError(f"device {device.id} ({device.protocol}) is not a Modbus TCP device")
    return device
