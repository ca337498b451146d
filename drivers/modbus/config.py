"""Configuration of Modbus devices and points. Imports no protocol library.

A device's request plan is made once, when its configuration is validated (a point
that can never be read is a configuration error), and read by its driver as `plan`.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, PositiveInt, PrivateAttr, model_validator

from drivers.modbus.planner import Plan, plan_points
from drivers.modbus.tables import REGISTER_COUNT, DataType, Order, Table
from gateway.model.devices import DeviceBase, PointBase
from gateway.model.schema import StrictModel, record


@record
class ModbusPoint(PointBase):
    table: Table
    address: int = Field(ge=0, le=65535, description="Protocol address, 0-based (register 40001 is holding 0).")
    type: DataType | None = Field(None, description="Defaults to bool for coils/discrete inputs, uint16 otherwise.")
    bit: int | None = Field(None, ge=0, le=15, description="For type bit: 0 is the least significant bit.")
    length: PositiveInt | None = Field(None, le=125, description="For type string: number of registers.")
    byte_order: Order | None = Field(None, description="Byte order inside a register; device default when absent.")
    word_order: Order | None = Field(None, description="Register order of multi-register values; device default.")

    @model_validator(mode="after")
    def _type_fits_table(self) -> Self:
        data_type = self.data_type
        if self.table.is_bits and data_type is not DataType.BOOL:
            raise ValueError(f"a {self.table} holds single bits; expected type bool, found {data_type}")
        if not self.table.is_bits and data_type is DataType.BOOL:
            raise ValueError("type bool is for coils and discrete inputs; for a bit of a register use type bit")
        if (data_type is DataType.BIT) != (self.bit is not None):
            raise ValueError("type bit needs `bit:` (0-15), and `bit:` is only for type bit")
        if (data_type is DataType.STRING) != (self.length is not None):
            raise ValueError("type string needs `length:` (registers), and `length:` is only for type string")
        if self.address + self.register_count > 65536:
            raise ValueError(f"address {self.address} + {self.register_count} registers runs past 65535")
        return self

    @property
    def data_type(self) -> DataType:
        if self.type is not None:
            return self.type
        return DataType.BOOL if self.table.is_bits else DataType.UINT16

    @property
    def decodes_boolean(self) -> bool:
        return self.data_type in (DataType.BOOL, DataType.BIT)

    @property
    def register_count(self) -> int:
        """Registers (or bits, for bit tables) this point occupies."""
        data_type = self.data_type
        if data_type is DataType.BOOL:
            return 1
        if data_type is DataType.STRING:
            return self.length or 1
        return REGISTER_COUNT[data_type]


class AddressRange(StrictModel):
    table: Table
    start: int = Field(ge=0, le=65535)
    end: int = Field(ge=0, le=65535, description="Inclusive.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) is before start ({self.start})")
        return self


class ModbusDeviceBase(DeviceBase):
    """Settings every Modbus device has, whatever carries its frames."""

    unit_id: int = Field(1, ge=0, le=255)
    byte_order: Order = Order.BIG
    word_order: Order = Order.BIG
    max_registers_per_request: PositiveInt = Field(125, le=125)
    max_bits_per_request: PositiveInt = Field(2000, le=2000)
    max_gap: int = Field(16, ge=0, le=124, description="Unused registers (or bits) bridged to merge two reads.")
    never_read: list[AddressRange] = Field(default_factory=list,
                                           description="Address ranges a merged request must never cover.")
    points: list[ModbusPoint]
    _plan: Plan[ModbusPoint] = PrivateAttr()

    @model_validator(mode="after")
    def _plannable(self) -> Self:
        # Raises ValueError for a point that cannot be read: longer than a request, or in a never_read range.
        self._plan = plan_points(self.points, self.max_registers_per_request, self.max_bits_per_request,
                                 self.max_gap, self.never_read)
        return self

    @property
    def plan(self) -> Plan[ModbusPoint]:
        """The requests one poll makes, as planned at validation (a driver copies it to learn splits)."""
        return self._plan


class ModbusTcpDevice(ModbusDeviceBase):
    protocol: Literal["modbus-tcp"]
    host: str
    port: int = Field(502, ge=1, le=65535)

    def link_id(self) -> str:
        # Devices behind one Modbus TCP gateway (same host and port, different unit ids) share its connection.
        return f"modbus-tcp:{self.host}:{self.port}"
