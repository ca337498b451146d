"""The only module that talks to pyserial: a local serial port as a `ByteStream`.

Why the event loop and not a reader thread: the port is opened non-blocking
(pyserial `timeout=0`, `write_timeout=0`) and its file descriptor is watched
with `loop.add_reader`, so every byte is handled in the one task that owns the
bus. There is no hand-over between threads, nothing to stop on close, and a
cancelled poll needs no cleanup. It needs a selectable descriptor, which every
serial port on Linux (the gateway's platform) has.

The port is opened `exclusive` (an advisory lock), so a second gateway, or a
stray terminal program, cannot interleave its bytes with ours unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import termios

import serial
import serial.rs485

from drivers.serial.config import Parity, SerialSettings
from drivers.serial.stream import ByteStream, LinkLost
from gateway.model.driver import DriverError

_PARITY = {Parity.NONE: serial.PARITY_NONE, Parity.EVEN: serial.PARITY_EVEN, Parity.ODD: serial.PARITY_ODD,
           Parity.MARK: serial.PARITY_MARK, Parity.SPACE: serial.PARITY_SPACE}
_STOP_BITS: dict[float, float] = {1: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE, 2: serial.STOPBITS_TWO}
_READ_CHUNK = 4096


class SerialPort(ByteStream):
    def __init__(self, path: str, settings: SerialSettings) -> None:
        super().__init__(path)
        self.path = path
        self.settings = settings
        self._port: serial.Serial | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        self.close()
        self._reset()
        try:
            port = self._configured_port()
            port.open()
        except (serial.SerialException, ValueError, OSError, termios.error) as exc:
            # termios.error: settings the device refuses (it is not an OSError)
            raise DriverError(f"cannot open serial port {self.path}: {exc}") from exc
        self._port = port
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(port.fileno(), self._on_readable)

    def _configured_port(self) -> serial.Serial:
        settings = self.settings
        port = serial.Serial()
        port.port = self.path
        port.baudrate = settings.baud
        port.bytesize = settings.data_bits
        port.parity = _PARITY[settings.parity]
        port.stopbits = _STOP_BITS[settings.stop_bits]
        port.timeout = 0  # non-blocking reads: the event loop tells us when bytes are there
        port.write_timeout = 0  # non-blocking writes
        port.exclusive = True
        if settings.rs485 is not None:
            rs485 = settings.rs485
            port.rs485_mode = serial.rs485.RS485Settings(
                rts_level_for_tx=rs485.rts_level_for_tx, rts_level_for_rx=rs485.rts_level_for_rx,
                delay_before_tx=rs485.delay_before_tx, delay_before_rx=rs485.delay_before_rx)
        return port

    def close(self) -> None:
        port, self._port = self._port, None
        if port is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(port.fileno())
            self._loop.remove_writer(port.fileno())
        with contextlib.suppress(serial.SerialException, OSError):
            port.close()  # may fail when the device is gone already; closed is what we wanted

    async def write(self, data: bytes) -> None:
        self._raise_if_failed()
        port = self._port
        if port is None:
            raise LinkLost(f"{self.path}: not open")
        view = memoryview(data)
        while view:
            try:
                written = port.write(view) or 0
            except (serial.SerialException, OSError) as exc:
                self._on_failure(f"write failed: {exc}")
                raise LinkLost(f"{self.path}: write failed: {exc}") from exc
            view = view[written:]
            if view:  # the driver's buffer is full (rare: frames are short); wait until it drains
                await self._writable(port)

    async def _writable(self, port: serial.Serial) -> None:
        assert self._loop is not None
        ready: asyncio.Future[None] = self._loop.create_future()

        def on_writable() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(port.fileno(), on_writable)
        try:
            await ready
        finally:
            self._loop.remove_writer(port.fileno())

    def _on_readable(self) -> None:
        port = self._port
        if port is None:
            return
        try:
            data = port.read(_READ_CHUNK)
        except (serial.SerialException, OSError) as exc:
            # Unplugged adapter or closed pseudo-terminal: stop watching, the next call raises LinkLost.
            if self._loop is not None:
                self._loop.remove_reader(port.fileno())
            self._on_failure(f"read failed: {exc}")
            return
        self._on_data(data)


def available_ports() -> list[str]:
    """Serial ports the system knows of (for `municipal-gateway scan` without an argument)."""
    from serial.tools import list_ports

    return sorted(info.device for info in list_ports.comports())
