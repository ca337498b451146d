"""systemd's watchdog, as the gateway meets it: a real datagram socket standing for systemd's NOTIFY_SOCKET,
WATCHDOG_USEC set, the whole gateway running. The pings come while it works and stop while the buffer's SQLite
thread is stuck (here: held by a job that waits), and come back when it is free."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.buffer import Buffer
from tests.brokers import Broker, eventually
from tests.e2e import running, write_config


class FakeSystemd:
    """Receives what the gateway sends to NOTIFY_SOCKET, on a thread, with the order it came in."""

    def __init__(self, path: Path) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.1)
        self.received: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                self.received.append(self._socket.recv(4096).decode())
            except TimeoutError:
                continue

    def pings(self) -> int:
        return self.received.count("WATCHDOG=1")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify"
    fake = FakeSystemd(path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # 0.4 s: a ping every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield fake
    fake.close()


async def test_the_pings_stop_while_the_buffer_thread_is_stuck_and_come_back_after(
        tmp_path: Path, broker: Broker, systemd: FakeSystemd) -> None:
    config = write_config(tmp_path, broker.port, [])
    async with running(config) as gateway:
        await eventually(lambda: systemd.pings() >= 3, "pings while the gateway works")
        assert "READY=1" in systemd.received
        watchdog = gateway.watchdog
        assert watchdog is not None and gateway.pipeline is not None
        buffer: Buffer = gateway.pipeline._buffer
        release = threading.Event()
        stuck = asyncio.ensure_future(buffer._thread.run(release.wait, 30))  # as a commit stuck on a dead SD card
        await eventually(lambda: watchdog.withheld >= 1, "the watchdog to notice")
        pings_when_stuck = systemd.pings()
        withheld = watchdog.withheld
        await eventually(lambda: watchdog.withheld >= withheld + 3, "three more periods while stuck")
        assert systemd.pings() == pings_when_stuck, "no ping while the buffer thread is stuck"
        release.set()
        await stuck
        await eventually(lambda: systemd.pings() > pings_when_stuck, "pings again once it is free")


async def test_without_watchdog_usec_nothing_watches(tmp_path: Path, broker: Broker,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    async with running(write_config(tmp_path, broker.port, [])) as gateway:
        await eventually(lambda: gateway.pipeline is not None, "started")
        assert gateway.watchdog is None
