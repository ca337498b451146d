"""Protocol drivers, one package each, and their registrations (one line per protocol).

The contract a driver fulfils is gateway/model/driver.py; the registry is drivers/registry.py.
Only configuration models are imported here: a driver, and the vendor library behind it, is
imported when a configured device needs it.
"""

from drivers.asciiline.config import AsciiLineDevice
from drivers.cjt188.config import Cjt188Device
from drivers.dlt645.config import Dlt645Device
from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.rtu_config import ModbusRtuDevice, ModbusRtuOverTcpDevice
from drivers.opcua.config import OpcUaDevice
from drivers.registry import register

register("modbus-tcp", ModbusTcpDevice, driver="drivers.modbus.tcp:ModbusTcpDriver",
         simulator="simulators.modbus:ModbusSimulator")
register("opcua", OpcUaDevice, driver="drivers.opcua.driver:OpcUaDriver", simulator="simulators.opcua:StationSimulator")
# On a shared serial bus (several protocols may share one port); probes run in this order in `scan`.
register("modbus-rtu", ModbusRtuDevice, bus_device="drivers.modbus.rtu:ModbusRtuBusDevice",
         probe="drivers.modbus.rtu:probe", simulator="simulators.modbus:RtuSlaves")
register("modbus-rtu-over-tcp", ModbusRtuOverTcpDevice, bus_device="drivers.modbus.rtu:ModbusRtuBusDevice",
         simulator="simulators.modbus:RtuSlaves")
register("dlt645", Dlt645Device, bus_device="drivers.dlt645.meter:Dlt645Meter", probe="drivers.dlt645.meter:probe",
         simulator="simulators.serial:Dlt645MeterSim")
register("cjt188", Cjt188Device, bus_device="drivers.cjt188.meter:Cjt188Meter", probe="drivers.cjt188.meter:probe",
         simulator="simulators.serial:Cjt188MeterSim")
register("ascii-line", AsciiLineDevice, bus_device="drivers.asciiline.sensor:AsciiLineSensor",
         simulator="simulators.serial:AsciiSensorSim")
