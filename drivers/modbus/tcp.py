"""Modbus TCP driver: the devices behind one host:port, over one connection.

Polling by one learning plan per unit id, shared by the devices on that unit, and the reasons put on bad
samples are shared with Modbus RTU: see polling.py. Here only the link is specific. What each unit taught
is kept in the state directory (`<state_dir>/modbus/`, see learning.py) and used after a restart.

No reply in time, a lost connection or bytes that cannot be framed: `read()`
raises DriverError (ReplyTimeout for a timeout). A silent unit behind a Modbus
TCP gateway leaves the connection up for the others (`link_lost=False`).

`counters(device)` counts requests sent, reads shared with another device of the unit, exception
replies, decode errors, timeouts and unreadable points per device, for the status report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from drivers.modbus.client import TcpLink
from drivers.modbus.config import ModbusDeviceBase, ModbusTcpDevice
from drivers.modbus.learning import PlanMemory
from drivers.modbus.polling import UnitPoller, unit_memory, unit_pollers
from gateway.model.driver import DriverError, LinkContext, Poller
from gateway.model.readings import Sample, Value


class ModbusTcpDriver(Poller[ModbusTcpDevice]):
    """All devices of one Modbus TCP host:port."""

    def __init__(self, devices: Sequence[ModbusTcpDevice], context: LinkContext | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(devices, context)
        first = self.devices[0]
        link = first.link_id()

        def memory(on_unit: Sequence[ModbusDeviceBase]) -> PlanMemory | None:
            # A driver made without a context (a test, a tool) keeps nothing in the gateway's state directory.
            return unit_memory(context.state_dir, link, on_unit) if context is not None else None

        self._pollers: dict[str, UnitPoller] = unit_pollers(self.devices, memory, clock)
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
        return self._pollers[device.id].describe(device)

    def counters(self, device: ModbusTcpDevice) -> dict[str, int]:
        return self._pollers[device.id].counters_of(device)

    async def read(self, device: ModbusTcpDevice) -> list[Sample]:
        if not self._link.connected:
            raise DriverError(f"not connected to {self._link.host}:{self._link.port}")
        return await self._pollers[device.id].read(self._link, device)

    async def write(self, device: ModbusTcpDevice, point: str, value: Value) -> Value:
        if not self._link.connected:
            raise DriverError(f"not connected to {self._link.host}:{self._link.port}")
        return await self._pollers[device.id].write(self._link, device, point, value)
