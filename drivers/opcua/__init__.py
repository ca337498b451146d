"""OPC-UA devices (asyncua). Only client.py imports asyncua."""
