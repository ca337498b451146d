"""Sensors that speak text lines on a serial port."""
