"""Protocol drivers. Each protocol registers its (lightweight) config model here; the driver
class itself, and the vendor library behind it, are imported only when a device uses it."""

from drivers.asciiline.config import AsciiLineDevice
from drivers.cjt188.config import Cjt188Device
from drivers.dlt645.config import Dlt645Device
from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.rtu_config import ModbusRtuDevice, ModbusRtuOverTcpDevice
from drivers.opcua.config import OpcUaDevice
from drivers.registry import register

register("modbus-tcp", ModbusTcpDevice, "drivers.modbus.tcp:ModbusTcpDriver")
register("opcua", OpcUaDevice, "drivers.opcua.driver:OpcUaDriver")
# Serial buses: every protocol on a port is served by one bus driver (several protocols may share a port).
register("modbus-rtu", ModbusRtuDevice, "drivers.serial.driver:FieldBusDriver")
register("modbus-rtu-over-tcp", ModbusRtuOverTcpDevice, "drivers.serial.driver:FieldBusDriver")
register("cjt188", Cjt188Device, "drivers.serial.driver:FieldBusDriver")
register("dlt645", Dlt645Device, "drivers.serial.driver:FieldBusDriver")
register("ascii-line", AsciiLineDevice, "drivers.serial.driver:FieldBusDriver")
