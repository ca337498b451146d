"""Shared serial buses: one owner per port, several protocols on it (Modbus RTU, CJ/T 188, DL/T 645, ASCII)."""
