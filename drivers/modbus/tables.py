"""The vocabulary of Modbus: its four tables, the data types a point can hold, byte and word order."""

from __future__ import annotations

import enum


class Table(enum.StrEnum):
    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    INPUT_REGISTER = "input_register"
    HOLDING_REGISTER = "holding_register"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE_INPUT)


class DataType(enum.StrEnum):
    BOOL = "bool"  # a coil or discrete input
    BIT = "bit"  # one bit of a register (`bit:` 0 = least significant)
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"  # `length:` registers, two characters each


REGISTER_COUNT: dict[DataType, int] = {
    DataType.BIT: 1, DataType.INT16: 1, DataType.UINT16: 1, DataType.INT32: 2, DataType.UINT32: 2,
    DataType.INT64: 4, DataType.UINT64: 4, DataType.FLOAT32: 2, DataType.FLOAT64: 4,
}


class Order(enum.StrEnum):
    BIG = "big"
    LITTLE = "little"
