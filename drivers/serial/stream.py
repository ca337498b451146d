"""Byte streams a bus runs on: a local serial port (port.py) or a TCP connection to a serial device server.

Both are driven by the event loop (no threads): received bytes are appended to
a buffer as they arrive, and `read_some()` waits for the buffer to fill or for
a deadline. A stream that fails (port unplugged, connection closed) raises
`LinkLost` from every later call until it is opened again.
"""

from __future__ import annotations

import abc
import asyncio
import time

from gateway.model.driver import DriverError


class LinkLost(DriverError):
    """The port or connection is gone; the scheduler closes the link and opens it again with back-off."""


class ByteStream(abc.ABC):
    """A half-duplex byte pipe to a bus. Used by one task at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last_rx = 0.0  # monotonic time the last byte arrived
        self._received = bytearray()
        self._arrived = asyncio.Event()
        self._failure: str | None = None

    @abc.abstractmethod
    async def open(self) -> None:
        """Open the port or connection. Raises DriverError."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close; harmless when already closed or broken."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Hand all of `data` to the port. Raises LinkLost."""

    async def read_some(self, wait: float) -> bytes:
        """Bytes received so far, waiting up to `wait` seconds for at least one. b"" when none came."""
        self._raise_if_failed()
        if not self._received and wait > 0:
            self._arrived.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._arrived.wait()
            except TimeoutError:
                pass
            self._raise_if_failed()
        return self.take_pending()

    def take_pending(self) -> bytes:
        """Whatever has been received and not yet taken, without waiting."""
        data = bytes(self._received)
        self._received.clear()
        return data

    def _on_data(self, data: bytes) -> None:
        if data:
            self._received += data
            self.last_rx = time.monotonic()
            self._arrived.set()

    def _on_failure(self, message: str) -> None:
        if self._failure is None:
            self._failure = message
        self._arrived.set()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise LinkLost(f"{self.name}: {self._failure}")

    def _reset(self) -> None:
        self._received.clear()
        self._failure = None
        self._arrived = asyncio.Event()


class TcpStream(ByteStream):
    """A TCP connection to a serial device server (e.g. Modbus RTU over TCP)."""

    def __init__(self, host: str, port: int, connect_timeout: float) -> None:
        super().__init__(f"{host}:{port}")
        self.host, self.port, self.connect_timeout = host, port, connect_timeout
        self._transport: asyncio.Transport | None = None

    async def open(self) -> None:
        self.close()
        self._reset()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, _ = await loop.create_connection(lambda: _Receiver(self), self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise DriverError(f"cannot connect to {self.name}: {exc or 'timed out'}") from exc
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def write(self, data: bytes) -> None:
        self._raise_if_failed()
        if self._transport is None or self._transport.is_closing():
            raise LinkLost(f"{self.name}: not connected")
        self._transport.write(data)


class _Receiver(asyncio.Protocol):
    def __init__(self, stream: TcpStream) -> None:
        self._stream = stream

    def data_received(self, data: bytes) -> None:
        self._stream._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stream._on_failure(f"connection lost ({exc})" if exc else "connection closed by the server")
