"""The registry of protocols. Each protocol registers once, in drivers/__init__.py: its configuration
model, and either its driver (a link of its own) or its bus device (it runs on a shared serial bus), and,
where it has them, its `scan` probe and its simulator.

Each is named as "package.module:name" and imported only when a configured device needs it: a gateway
that uses no OPC-UA device never imports asyncua, nor even the OPC-UA configuration model.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.model.devices import DeviceBase
from gateway.model.driver import Driver, LinkContext


class ProtocolUnavailable(Exception):
    """A configured protocol whose library is not installed (e.g. asyncua for OPC-UA)."""


@dataclass(frozen=True)
class Protocol:
    name: str
    config: str  # its configuration model, a DeviceBase
    driver: str | None = None  # its Driver class, for a protocol with links of its own
    bus_device: str | None = None  # its BusDevice class, for a protocol on a shared serial bus
    probe: str | None = None  # its `scan` probe (drivers/serial/scan.py)
    simulator: str | None = None  # its simulated device, for tests, the demo and the benchmark

    @property
    def config_model(self) -> type[DeviceBase]:
        model: type[DeviceBase] = self.load(self.config)
        return model

    def load(self, path: str) -> Any:
        """The object named by one of the paths above, importing its module now."""
        module_name, _, name = path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ("drivers", "gateway", "simulators"):
                raise  # our own module missing is a bug, not an installation choice
            raise ProtocolUnavailable(
                f"protocol {self.name!r} needs the Python package {exc.name!r}, which is not installed here "
                f"(for OPC-UA: pip install 'municipal-gateway[opcua]')") from None
        return getattr(module, name)


_REGISTRY: dict[str, Protocol] = {}
# The driver that owns a shared serial bus and hosts the bus devices of every protocol on it.
BUS_DRIVER = "drivers.serial.driver:FieldBusDriver"


def register(name: str, config: str, *, driver: str | None = None, bus_device: str | None = None,
             probe: str | None = None, simulator: str | None = None) -> None:
    if name in _REGISTRY:
        raise ValueError(f"protocol {name!r} is registered twice")
    if (driver is None) == (bus_device is None):
        raise ValueError(f"protocol {name!r} needs a driver or a bus device, not both")
    _REGISTRY[name] = Protocol(name, config, driver, bus_device, probe, simulator)


def protocols() -> dict[str, Protocol]:
    return dict(_REGISTRY)


def make_driver(devices: Sequence[DeviceBase], context: LinkContext | None = None) -> Driver[Any]:
    """The driver of one link (`devices` share it), importing its protocol libraries only now."""
    protocol = _REGISTRY[devices[0].protocol]
    if protocol.bus_device is None:
        assert protocol.driver is not None
        driver: Driver[Any] = protocol.load(protocol.driver)(devices, context)
        return driver
    members = [_bus_device(device) for device in devices]
    bus_driver: Driver[Any] = protocol.load(BUS_DRIVER)(devices, members, context)
    return bus_driver


def _bus_device(device: DeviceBase) -> Any:
    protocol = _REGISTRY[device.protocol]
    if protocol.bus_device is None:
        raise ValueError(f"device {device.id}: protocol {device.protocol} does not run on a serial bus")
    return protocol.load(protocol.bus_device)(device)
