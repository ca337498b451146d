"""Modbus drivers over pymodbus: TCP (tcp.py) and RTU on shared serial buses or device servers (rtu.py)."""
