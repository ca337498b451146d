"""Configuration of Modbus RTU devices: on a local serial port, or behind a serial device server over TCP.
Imports no protocol library. Points, data types and request limits are those of Modbus TCP (config.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from drivers.modbus.config import ModbusDeviceBase
from drivers.serial.config import BusOverTcp, SerialDevice


class ModbusRtuDevice(ModbusDeviceBase, SerialDevice):
    """A Modbus RTU slave on a serial port shared with the other devices naming the same `port`."""

    protocol: Literal["modbus-rtu"]
    unit_id: int = Field(1, ge=1, le=247, description="Slave address on the bus (1-247).")

    def bus_address(self) -> str | None:
        return f"Modbus unit id {self.unit_id}"


class ModbusRtuOverTcpDevice(ModbusDeviceBase, BusOverTcp):
    """A Modbus RTU slave behind a serial device server that passes RTU frames through a TCP connection
    (not a Modbus TCP gateway: frames keep their CRC and have no MBAP header)."""

    protocol: Literal["modbus-rtu-over-tcp"]
    unit_id: int = Field(1, ge=1, le=247)
