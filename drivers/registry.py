"""The registry of protocols: each registers its configuration model and its driver (drivers/__init__.py).

Adding a protocol: write one package with a config model (subclassing
`DeviceBase` and `PointBase`) and a driver class, and call `register()` in
`drivers/__init__.py`. Driver modules import their vendor library lazily, so
a gateway that uses no OPC-UA device never imports asyncua.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from gateway.model.devices import DeviceBase
from gateway.model.driver import Driver


class ProtocolUnavailable(Exception):
    """A configured protocol whose library is not installed (e.g. asyncua for OPC-UA)."""


@dataclass(frozen=True)
class Protocol:
    name: str
    config_model: type[DeviceBase]
    driver_path: str  # "package.module:Class", imported only when a device needs it

    def driver_class(self) -> type[Driver]:
        module_name, _, class_name = self.driver_path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ("drivers", "gateway"):
                raise  # our own module missing is a bug, not an installation choice
            raise ProtocolUnavailable(
                f"protocol {self.name!r} needs the Python package {exc.name!r}, which is not installed here "
                f"(for OPC-UA: pip install 'municipal-gateway[opcua]')") from None
        driver: Any = getattr(module, class_name)
        return driver  # type: ignore[no-any-return]


_REGISTRY: dict[str, Protocol] = {}


def register(name: str, config_model: type[DeviceBase], driver_path: str) -> None:
    if name in _REGISTRY:
        raise ValueError(f"protocol {name!r} is registered twice")
    _REGISTRY[name] = Protocol(name, config_model, driver_path)


def protocols() -> dict[str, Protocol]:
    return dict(_REGISTRY)
