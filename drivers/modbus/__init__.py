"""Modbus drivers: TCP (and, later, RTU on shared serial ports) over pymodbus."""
