"""Simulated Modbus field devices, driven by the same configuration the gateway reads.

For the demo, the benchmark and end-to-end tests: one `ModbusSimulator` per
configured port, serving every unit id configured on it (a TCP port, or a serial
port whose units `rtu_slaves()` puts on a simulated bus), with values that move
plausibly inside each indicator's range (measurements drift along a slow wave,
totalisers count up, states change now and then). Values are written in the
device's own encoding (type, byte and word order, scale, offset and unit), so
the gateway decodes exactly what it would from real hardware.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from drivers.modbus.codec import EncodeError, encode
from drivers.modbus.config import ModbusDeviceBase, ModbusPoint
from drivers.modbus.tables import DataType, Table
from gateway.model.catalogue import IndicatorKind
from gateway.model.devices import DeviceBase
from gateway.model.resolved import ResolvedDevice, ResolvedPoint, Transform
from simulators.modbus import ModbusSimulator, RtuSlaves


@dataclass
class _SimulatedPoint:
    device: ModbusDeviceBase
    point: ModbusPoint
    transform: Transform
    kind: IndicatorKind
    low: float
    high: float
    phase: float
    total: float
    last_seconds: float = 0.0


class FieldSimulator:
    """Every simulator the given Modbus devices need, keyed by port (a TCP port, or a serial port's path).

    `typical` gives, per indicator id, the band a measurement wanders in (canonical
    unit), or for a counter its starting reading and increase per hour; a key
    `<asset id>/<indicator id>` gives it for one asset only.
    """

    def __init__(self, devices: Sequence[ResolvedDevice[DeviceBase]], *,
                 typical: Mapping[str, tuple[float, float]] | None = None, free_ports: bool = False,
                 seed: int = 1) -> None:
        """The Modbus devices among `devices` (others are left out)."""
        self._random = random.Random(seed)
        self._typical = dict(typical or {})
        modbus = [(d.config, d) for d in devices if isinstance(d.config, ModbusDeviceBase)]
        ports: dict[int | str, set[int]] = {}
        for config, _ in modbus:
            ports.setdefault(_port_of(config), set()).add(config.unit_id)
        # With free_ports, each configured port is served on a free one instead (see port_map).
        # Serial ports get tables only: the bus simulator answers from them (see rtu_slaves).
        self.servers = {port: ModbusSimulator(units, port=0 if free_ports or isinstance(port, str) else port)
                        for port, units in ports.items()}
        self._points = [self._simulated(config, point) for config, resolved in modbus for point in resolved.points]

    def _simulated(self, device: ModbusDeviceBase, resolved: ResolvedPoint) -> _SimulatedPoint:
        point, transform = resolved.config, resolved.transform
        assert isinstance(point, ModbusPoint), "the points of a Modbus device are Modbus points"
        indicator = resolved.indicator
        typical = self._typical.get(f"{device.asset.id}/{indicator.id}") or self._typical.get(indicator.id)
        if typical is not None:
            low, high = typical
        elif transform.low is not None and transform.high is not None:
            low, high = transform.low, transform.high
        else:
            low, high = 0.0, 100.0
        return _SimulatedPoint(device, point, transform, indicator.kind, low, high,
                               phase=self._random.uniform(0, 2 * math.pi), total=low)

    async def start(self) -> None:
        for port, server in self.servers.items():
            if isinstance(port, int):
                await server.start()
        self.move(0.0)

    async def stop(self) -> None:
        for server in self.servers.values():
            await server.stop()

    def move(self, seconds: float) -> None:
        """Set every point to its value `seconds` into the simulation. A writable point (a setpoint, a
        contactor) gets its first value only: from then on it holds what the gateway writes."""
        for simulated in self._points:
            if seconds > 0 and simulated.point.writable:
                continue
            self._write(simulated, self._value(simulated, seconds))

    def _value(self, simulated: _SimulatedPoint, seconds: float) -> float | bool:
        span = simulated.high - simulated.low
        if simulated.kind is IndicatorKind.ALARM:
            return False
        if simulated.point.data_type in (DataType.BOOL, DataType.BIT) or simulated.kind is IndicatorKind.STATE:
            # Mostly steady, with a change now and then (different points at different moments).
            return math.sin(seconds / 40 + simulated.phase) > 0.8
        if simulated.kind is IndicatorKind.COUNTER:
            # For counters, `low` is the starting reading and `high` the increase per hour.
            elapsed, simulated.last_seconds = seconds - simulated.last_seconds, seconds
            simulated.total += simulated.high * max(elapsed, 0.0) / 3600 * (0.5 + self._random.random())
            return simulated.total
        # A slow wave through the middle of the valid range, with a little noise.
        wave = math.sin(seconds / 30 + simulated.phase) * 0.15 + self._random.uniform(-0.01, 0.01)
        return simulated.low + span * (0.5 + wave)

    def _write(self, simulated: _SimulatedPoint, canonical: float | bool) -> None:
        device, point = simulated.device, simulated.point
        server = self.servers[_port_of(device)]
        if point.table.is_bits:
            server.set_bits(device.unit_id, point.table, point.address, [bool(canonical)])
            return
        if point.data_type is DataType.BIT:
            assert point.bit is not None
            (word,) = server.get_registers(device.unit_id, point.table, point.address, 1)
            word = word | (1 << point.bit) if canonical else word & ~(1 << point.bit)
            server.set_registers(device.unit_id, point.table, point.address, [word])
            return
        if point.data_type is DataType.STRING:
            return
        raw = simulated.transform.invert(float(canonical))
        if point.data_type not in (DataType.FLOAT32, DataType.FLOAT64):
            raw = round(raw)  # the nearest value the register holds
        try:
            registers = encode(point, raw, point.byte_order or device.byte_order, point.word_order or device.word_order)
        except EncodeError:
            return  # a value the register type cannot hold: keep the previous one
        server.set_registers(device.unit_id, point.table, point.address, registers)

    @property
    def port_map(self) -> dict[int, int]:
        """Configured TCP port -> the port actually served (they differ with free_ports)."""
        return {configured: server.port for configured, server in self.servers.items() if isinstance(configured, int)}

    def rtu_slaves(self, port: str) -> RtuSlaves:
        """The Modbus RTU units configured on serial port `port`, to put on a simulated bus."""
        return RtuSlaves(self.servers[port])

    @property
    def requests(self) -> int:
        """Requests received by all simulators so far."""
        return sum(sum(server.requests.values()) for server in self.servers.values())


def _port_of(device: ModbusDeviceBase) -> int | str:
    port = getattr(device, "port", None)
    if not isinstance(port, int | str):
        raise ValueError(f"device {device.id} is neither a Modbus TCP nor a Modbus RTU device")
    return port


__all__ = ["FieldSimulator", "Table"]
