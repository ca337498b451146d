"""systemd's watchdog (`WatchdogSec=` in the unit): `WATCHDOG=1` is sent only while the gateway works.

Each ping needs three things at once: the event loop runs this task on time (a blocked loop sends nothing),
the buffer's SQLite thread answers a no-op job (a stuck commit or fsync holds it), and the pipeline is idle
or has committed lately (it cannot hand readings to a buffer that does not take them). When one of them is
stuck, the pings stop and systemd restarts the gateway after `WatchdogSec`; the log says once which part
held them back, so the journal explains the restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.systemd import notify

log = logging.getLogger(__name__)


def watchdog_interval() -> float | None:
    """Seconds systemd allows between pings, when it watches this process (WATCHDOG_USEC, WATCHDOG_PID)."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1_000_000
    except ValueError:
        return None
    return seconds if seconds > 0 else None


@dataclass(frozen=True, slots=True)
class Check:
    """One part that must be making progress: `alive()` answers within the watchdog's time, or it is stuck."""

    name: str
    alive: Callable[[], Awaitable[bool]]


class Watchdog:
    def __init__(self, interval_s: float, checks: list[Check]) -> None:
        self._period = interval_s / 2  # as sd_watchdog_enabled(3) advises: ping at half the interval
        self._checks = checks
        self.pings = 0
        self.withheld = 0
        self._stuck: list[str] = []

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            stuck = [check.name for check in self._checks if not await self._answers(check)]
            if stuck:
                self.withheld += 1
                if stuck != self._stuck:
                    log.warning("not telling systemd's watchdog that the gateway is alive: %s not making "
                                "progress; systemd restarts the gateway if this lasts", " and ".join(stuck))
            else:
                if self._stuck:
                    log.info("the gateway makes progress again; the watchdog is told so")
                notify("WATCHDOG=1")
                self.pings += 1
            self._stuck = stuck

    async def _answers(self, check: Check) -> bool:
        try:
            return await asyncio.wait_for(check.alive(), timeout=self._period / 2)
        except TimeoutError:
            return False
