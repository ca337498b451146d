"""Protocol drivers. Each protocol registers its (lightweight) config model here; the driver
class itself, and the vendor library behind it, are imported only when a device uses it."""

from drivers.base import register
from drivers.modbus.config import ModbusTcpDevice
from drivers.opcua.config import OpcUaDevice

register("modbus-tcp", ModbusTcpDevice, "drivers.modbus.tcp:ModbusTcpDriver")
register("opcua", OpcUaDevice, "drivers.opcua.driver:OpcUaDriver")
