"""The process's own figures: resident memory, CPU time, start time, and how late the event loop runs.

Read from /proc and os.times() (no psutil at run time); on a system without /proc the memory is 0.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def rss_bytes() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * _PAGE
    return 0


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _start_time_ms() -> int:
    """When this process started (UTC ms): its start in clock ticks after boot, plus the boot time."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/stat", encoding="ascii") as stat:
            after_name = stat.read().rsplit(")", 1)[1].split()
        with open("/proc/stat", encoding="ascii") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith("btime "))
        return round((boot + int(after_name[19]) / _TICKS) * 1000)
    return round(time.time() * 1000)


STARTED_MS = _start_time_ms()


class CpuShare:
    """The share of one core the process used between two calls (for the minute-by-minute MQTT status)."""

    def __init__(self) -> None:
        self._cpu = cpu_seconds()
        self._at = time.monotonic()

    def since_last(self) -> float:
        cpu, at = cpu_seconds(), time.monotonic()
        share = (cpu - self._cpu) / (at - self._at) if at > self._at else 0.0
        self._cpu, self._at = cpu, at
        return share


class LoopLag:
    """How late the event loop wakes a timer: a loop blocked by a slow call shows here first."""

    def __init__(self, interval: float = 0.5, keep: int = 120) -> None:
        self.interval = interval
        self.last = 0.0
        self._recent: collections.deque[float] = collections.deque(maxlen=keep)  # a minute at 0.5 s

    @property
    def worst(self) -> float:
        return max(self._recent, default=0.0)

    async def run(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(self.interval)  # a timer to measure, not a wait for something
            self.last = max(0.0, time.monotonic() - asked - self.interval)
            self._recent.append(self.last)
