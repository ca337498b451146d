"""Configuration of Modbus RTU devices: on a local serial port, or behind a serial device server over TCP.
Imports no protocol library. Points, data types and request limits are those of Modbus TCP (config.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from drivers.modbus.config import ModbusDeviceBase
from drivers.serial.config import SerialDevice


class ModbusRtuDevice(ModbusDeviceBase, SerialDevice):
    """A Modbus RTU slave on a serial port shared with the other devices naming the same `port`."""

    protocol: Literal["modbus-rtu"]
    unit_id: int = Field(1, ge=1, le=247, description="Slave address on the bus (1-247).")

    def bus_address(self) -> str | None:
        return f"Modbus unit id {self.unit_id}"


class ModbusRtuOverTcpDevice(ModbusDeviceBase):
    """A Modbus RTU slave behind a serial device server that passes RTU frames through a TCP connection
    (not a Modbus TCP gateway: frames keep their CRC and have no MBAP header)."""

    protocol: Literal["modbus-rtu-over-tcp"]
    host: str
    port: int = Field(ge=1, le=65535, description="TCP port of the device server's serial channel.")
    unit_id: int = Field(1, ge=1, le=247)

    def link_id(self) -> str:
        # Every slave on the device server's serial line shares its one TCP connection.
        return f"rtu-over-tcp:{self.host}:{self.port}"
