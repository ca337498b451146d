"""Protocol drivers, one package each, and their registrations (one line per protocol).

The contract a driver fulfils is gateway/model/driver.py; the registry is drivers/registry.py. Nothing of
a protocol is imported here: its configuration model, its driver and the vendor library behind it are
imported when a configured device needs them.
"""

from drivers.registry import register

register("modbus-tcp", "drivers.modbus.config:ModbusTcpDevice", driver="drivers.modbus.tcp:ModbusTcpDriver",
         simulator="simulators.modbus:ModbusSimulator")
register("opcua", "drivers.opcua.config:OpcUaDevice", driver="drivers.opcua.driver:OpcUaDriver",
         simulator="simulators.opcua:StationSimulator")
# On a shared serial bus (several protocols may share one port); probes run in this order in `scan`.
register("modbus-rtu", "drivers.modbus.rtu_config:ModbusRtuDevice",
         bus_device="drivers.modbus.rtu:ModbusRtuBusDevice", probe="drivers.modbus.rtu:probe",
         simulator="simulators.modbus:RtuSlaves")
register("modbus-rtu-over-tcp", "drivers.modbus.rtu_config:ModbusRtuOverTcpDevice",
         bus_device="drivers.modbus.rtu:ModbusRtuBusDevice", simulator="simulators.modbus:RtuSlaves")
register("dlt645", "drivers.dlt645.config:Dlt645Device", bus_device="drivers.dlt645.meter:Dlt645Meter",
         probe="drivers.dlt645.meter:probe", simulator="simulators.serial:Dlt645MeterSim")
register("cjt188", "drivers.cjt188.config:Cjt188Device", bus_device="drivers.cjt188.meter:Cjt188Meter",
         probe="drivers.cjt188.meter:probe", simulator="simulators.serial:Cjt188MeterSim")
register("ascii-line", "drivers.asciiline.config:AsciiLineDevice",
         bus_device="drivers.asciiline.sensor:AsciiLineSensor", simulator="simulators.serial:AsciiSensorSim")
# The same devices on the serial line of a serial device server (transparent TCP), as modbus-rtu-over-tcp.
register("dlt645-over-tcp", "drivers.dlt645.config:Dlt645OverTcpDevice", bus_device="drivers.dlt645.meter:Dlt645Meter",
         simulator="simulators.serial:Dlt645MeterSim")
register("cjt188-over-tcp", "drivers.cjt188.config:Cjt188OverTcpDevice", bus_device="drivers.cjt188.meter:Cjt188Meter",
         simulator="simulators.serial:Cjt188MeterSim")
register("ascii-line-over-tcp", "drivers.asciiline.config:AsciiLineOverTcpDevice",
         bus_device="drivers.asciiline.sensor:AsciiLineSensor", simulator="simulators.serial:AsciiSensorSim")
