"""Sensor sources: Modbus TCP/RTU, serial line sensors and recorded files."""
