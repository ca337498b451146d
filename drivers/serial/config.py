"""Serial port settings and the base of every device that lives on a serial port. Imports no vendor library.

Decision: the port settings sit on each device (`port:` and `serial:`), not in a
separate port block, so a device file stays self-contained and the loader needs
no new kind of entry. Every device on one port must then agree; `port_conflicts()`
finds those that do not (and other things a shared bus cannot do, like two
devices with one address), and the bus driver refuses such a set of devices.
Settings default to what RS-485 meters most often use (8 data bits, even parity,
1 stop bit); the baud rate has no default, because a wrong guess is silent.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

from gateway.model.devices import DeviceBase
from gateway.model.schema import Seconds, StrictModel

# Above this baud rate Modbus fixes the inter-frame silence instead of scaling it with the character time.
_FIXED_SILENCE_ABOVE_BAUD = 19_200
_FIXED_SILENCE = 0.00175


class Parity(enum.StrEnum):
    NONE = "none"
    EVEN = "even"
    ODD = "odd"
    MARK = "mark"
    SPACE = "space"


class Rs485Settings(StrictModel):
    """Direction control by the serial driver (the kernel's RS-485 mode), for adapters that need it.
    Adapters that switch direction on their own need no `rs485:` block."""

    rts_level_for_tx: bool = Field(True, description="RTS level while sending.")
    rts_level_for_rx: bool = Field(False, description="RTS level while receiving.")
    delay_before_tx: float | None = Field(None, ge=0, description="Seconds between raising RTS and sending.")
    delay_before_rx: float | None = Field(None, ge=0, description="Seconds between the last byte and receiving.")


class SerialSettings(StrictModel):
    baud: int = Field(ge=300, le=4_000_000, description="Bits per second, e.g. 2400, 9600, 19200.")
    data_bits: Literal[5, 6, 7, 8] = 8
    parity: Parity = Parity.EVEN
    stop_bits: float = Field(1, description="1, 1.5 or 2.")
    rs485: Rs485Settings | None = None
    silence: Seconds | None = Field(
        None, description="Seconds of silence before each frame; default 3.5 character times (1.75 ms above "
                          "19200 baud), as Modbus RTU requires.")

    @field_validator("stop_bits")
    @classmethod
    def _known_stop_bits(cls, value: float) -> float:
        if value not in (1, 1.5, 2):
            raise ValueError(f"stop_bits must be 1, 1.5 or 2, found {value:g}")
        return value

    @property
    def char_time(self) -> float:
        """Seconds one character takes on the wire: start bit, data bits, parity bit, stop bits."""
        bits = 1 + self.data_bits + (0 if self.parity is Parity.NONE else 1) + self.stop_bits
        return bits / self.baud

    @property
    def frame_silence(self) -> float:
        if self.silence is not None:
            return self.silence
        if self.baud > _FIXED_SILENCE_ABOVE_BAUD:
            return _FIXED_SILENCE
        return 3.5 * self.char_time


class OnBus(DeviceBase):
    """What every device on a shared bus has, whether the bus is a local port or a serial device server."""

    def bus_address(self) -> str | None:
        """What selects this device on the bus (protocol and address), to find two devices answering alike."""
        return None

    def needs_port_alone(self) -> bool:
        """True for a device that cannot share its bus (one that pushes data unasked)."""
        return False

    def bus_name(self) -> str:
        """The bus as the operator names it in messages."""
        raise NotImplementedError

    @classmethod
    def link_conflicts(cls, devices: Sequence[DeviceBase]) -> list[tuple[DeviceBase, str, str]]:
        return [(device, "port", problem) for device, problem in port_conflicts(devices)]


class SerialDevice(OnBus):
    """A device on a local serial port. Devices naming the same `port` share it (one request at a time)."""

    port: str = Field(min_length=1, description="Serial device path, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...; "
                                                "name a port the same way on every device that uses it.")
    serial: SerialSettings

    def link_id(self) -> str:
        return f"serial:{self.port}"

    def bus_name(self) -> str:
        return f"port {self.port}"


class BusOverTcp(OnBus):
    """A device on the serial line of a serial device server, reached over TCP (bytes passed through unchanged).
    Every device naming the same host and port shares the server's one connection, whatever its protocol."""

    host: str
    port: int = Field(ge=1, le=65535, description="TCP port of the device server's serial channel.")
    serial: SerialSettings | None = Field(
        None, description="The settings of the server's serial line (the server itself is set up on its own "
                          "page): with them the gateway keeps the line's silence between frames and counts "
                          "the time frames take on it; without, the server is left to keep them.")

    def link_id(self) -> str:
        return f"bus-over-tcp:{self.host}:{self.port}"

    def bus_name(self) -> str:
        return f"device server {self.host}:{self.port}"


def port_conflicts(devices: Sequence[DeviceBase]) -> list[tuple[DeviceBase, str]]:
    """(device, problem) for each device that cannot share its bus (serial port or device server) with the
    others as configured."""
    by_link: dict[str, list[OnBus]] = defaultdict(list)
    for device in devices:
        if isinstance(device, OnBus) and device.enabled:
            by_link[device.link_id()].append(device)
    problems: list[tuple[DeviceBase, str]] = []
    for on_link in by_link.values():
        problems.extend(_conflicts_on_bus(on_link))
    return problems


def _conflicts_on_bus(devices: Sequence[OnBus]) -> list[tuple[DeviceBase, str]]:
    problems: list[tuple[DeviceBase, str]] = []
    first = devices[0]
    bus = first.bus_name()
    seen: dict[str, OnBus] = {}
    for device in devices:
        settings, first_settings = _line(device), _line(first)
        if settings != first_settings:
            problems.append((device, f"serial settings {_show(settings)} differ from those of device "
                                     f"{first.id} on the same {bus} ({_show(first_settings)}); "
                                     "expected every device on one port to use the same settings"))
        if device.needs_port_alone() and len(devices) > 1:
            others = ", ".join(d.id for d in devices if d is not device)
            problems.append((device, f"device {device.id} pushes data unasked and cannot share {bus} "
                                     f"with {others}"))
        address = device.bus_address()
        if address is not None:
            if address in seen:
                problems.append((device, f"{address} on {bus} is already used by device {seen[address].id}; "
                                         "expected one address per device on a bus"))
            seen.setdefault(address, device)
    return problems


def _line(device: OnBus) -> SerialSettings | None:
    return device.serial if isinstance(device, SerialDevice | BusOverTcp) else None


def _show(settings: SerialSettings | None) -> str:
    if settings is None:
        return "(none given)"
    parity = settings.parity.value[0].upper()
    text = f"{settings.baud} {settings.data_bits}{parity}{settings.stop_bits:g}"
    if settings.rs485 is not None:
        text += " rs485"
    return text

