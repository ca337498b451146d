"""Modbus TCP driver: the devices behind one host:port (one unit id each), over one connection.

Polling by plan, splitting on exception 02 and the reasons put on bad samples
are shared with Modbus RTU: see polling.py. Here only the link is specific.

No reply in time, a lost connection or bytes that cannot be framed: `read()`
raises DriverError (ReplyTimeout for a timeout). A silent unit behind a Modbus
TCP gateway leaves the connection up for the others (`link_lost=False`).

`counters(device)` counts requests sent, exception replies, decode errors and
timeouts per device, for the status report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from drivers.modbus.client import TcpLink
from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.polling import ModbusDevicePoller
from gateway.model.driver import DriverError, LinkContext, Poller
from gateway.model.readings import Sample, Value


class ModbusTcpDriver(Poller[ModbusTcpDevice]):
    """All devices of one Modbus TCP host:port."""

    def __init__(self, devices: Sequence[ModbusTcpDevice], context: LinkContext | None = None) -> None:
        super().__init__(devices, context)
        first = self.devices[0]
        self._pollers = {device.id: ModbusDevicePoller(device) for device in self.devices}
        self._link = TcpLink(first.host, first.port, timeout=max(device.timeout for device in self.devices),
                             unit_timeouts={device.unit_id: device.timeout for device in self.devices})

    @property
    def connected(self) -> bool:
        return self._link.connected

    async def open(self) -> None:
        if not self._link.connected:
            await self._link.connect()

    async def close(self) -> None:
        self._link.close()

    def describe(self, device: ModbusTcpDevice) -> list[str]:
        return self._pollers[device.id].describe()

    def counters(self, device: ModbusTcpDevice) -> dict[str, int]:
        return dataclasses.asdict(self._pollers[device.id].counters)

    async def read(self, device: ModbusTcpDevice) -> list[Sample]:
        if not self._link.connected:
            raise DriverError(f"not connected to {self._link.host}:{self._link.port}")
        return await self._pollers[device.id].read(self._link)

    async def write(self, device: ModbusTcpDevice, point: str, value: Value) -> None:
        await self._pollers[device.id].write(self._link, point, value)
