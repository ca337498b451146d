"""Can the system clock be trusted? A Raspberry Pi has no real-time clock: after a power cut without network it
boots with the time it last saved (or 1970), and every reading would be stamped with it.

Two questions, asked separately:

- **Synchronised?** The kernel knows: an NTP client (systemd-timesyncd, chrony, ntpd) clears the kernel's
  "unsynchronised" status once it has set the clock, and the kernel sets it again when the client stops
  disciplining it for a while. `adjtimex(2)` with no mode bits only reads that status (it is what
  `timedatectl` reports as "System clock synchronized"); changing the clock would need CAP_SYS_TIME,
  which the service does not have. Where the call is refused (a sandbox) the flag file systemd-timesyncd
  keeps is read instead; where neither answers, the state is unknown and the gateway says so once.
- **Did it jump?** The wall clock is compared with the monotonic clock, which never jumps: a change of
  their difference by more than JUMP_TOLERANCE between two looks is a step of the wall clock (an NTP
  client setting it after boot, or someone with `date -s`). Slewing (an NTP client speeding or slowing
  the clock by at most 0.05 %) never adds up to that between two looks.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# A step of the wall clock against the monotonic clock larger than this, in ms, is a jump.
JUMP_TOLERANCE_MS = 1000
# Jumps worth a warning: any step backwards, and forwards by more than an hour (a Pi that booted with an
# old time and was just set right; a smaller forward step is an NTP correction, logged at info).
REPORT_FORWARD_MS = 3_600_000
# systemd-timesyncd creates this file once it has synchronised the clock (systemd >= 239).
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")

_TIME_ERROR = 5  # adjtimex's return value while the clock is not synchronised
_STA_UNSYNC = 0x0040


class ClockState(enum.StrEnum):
    SYNCHRONISED = "synchronised"
    UNSYNCHRONISED = "unsynchronised"
    UNKNOWN = "unknown"  # nothing on this system could tell
    ASSUMED = "assumed"  # not asked: the configuration says the clock is right (clock.source: none)


class _Timex(ctypes.Structure):
    # struct timex up to `status` (the fields' C types keep the layout right on 32- and 64-bit systems),
    # then room for the rest, which the kernel writes too.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("rest", ctypes.c_byte * 256)]


def kernel_clock_state() -> ClockState:
    """What the kernel says (adjtimex, read only), or UNKNOWN where the call is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError):
        return ClockState.UNKNOWN
    timex = _Timex()  # modes 0: read only
    result = adjtimex(ctypes.byref(timex))
    if result < 0:
        return ClockState.UNKNOWN
    unsynchronised = result == _TIME_ERROR or timex.status & _STA_UNSYNC
    return ClockState.UNSYNCHRONISED if unsynchronised else ClockState.SYNCHRONISED


def assumed_clock_state() -> ClockState:
    return ClockState.ASSUMED


def system_clock_state() -> ClockState:
    """The kernel's answer; where the kernel cannot be asked, systemd-timesyncd's flag file (present once
    it has synchronised; absent says nothing, since another NTP client may be in charge)."""
    state = kernel_clock_state()
    if state is ClockState.UNKNOWN and TIMESYNCD_FLAG.exists():
        return ClockState.SYNCHRONISED
    return state


@dataclass(frozen=True, slots=True)
class Jump:
    """A step of the wall clock: `delta_ms` > 0 forwards. `before_ms` is the time the clock would have
    shown without the step, `after_ms` what it shows."""

    delta_ms: int
    before_ms: int
    after_ms: int

    @property
    def worth_a_warning(self) -> bool:
        return self.delta_ms < 0 or self.delta_ms > REPORT_FORWARD_MS

    def describe(self) -> str:
        direction = "forwards" if self.delta_ms > 0 else "backwards"
        return (f"the system clock jumped {direction} by {_duration(abs(self.delta_ms))} "
                f"(from {_utc(self.before_ms)} to {_utc(self.after_ms)})")


class ClockWatch:
    """Watches the system clock: its synchronisation (asked every `check_interval` seconds: cheap, but a
    system call) and its jumps (looked for every second by `run`, and by whoever calls `jumped()` before
    using the time: two clock reads).

    `uncertain` is what readings' time is: True while the clock is known not to be synchronised. Parts that
    care subscribe: `on_state` callbacks get each new ClockState, `on_jump` callbacks each Jump, in the
    event loop, before the time after the jump is used by whoever asked.
    """

    def __init__(self, probe: Callable[[], ClockState] = system_clock_state,
                 wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
                 monotonic_ms: Callable[[], int] = lambda: time.monotonic_ns() // 1_000_000) -> None:
        self._probe = probe
        self._wall_ms = wall_ms
        self._monotonic_ms = monotonic_ms
        self._offset_ms = wall_ms() - monotonic_ms()
        self.state = ClockState.UNKNOWN
        self._asked = False  # the first answer is told whatever it is
        self.jumps = 0
        self.on_state: list[Callable[[ClockState], None]] = []
        self.on_jump: list[Callable[[Jump], None]] = []

    async def run(self, check_interval: float) -> None:
        """Ask about synchronisation now and every `check_interval` seconds, look for jumps every second;
        until cancelled."""
        self.check()
        checked = time.monotonic()
        while True:
            await asyncio.sleep(1.0)  # a timer: jumps are looked for once a second
            self.jumped()
            if time.monotonic() - checked >= check_interval:
                self.check()
                checked = time.monotonic()

    @property
    def uncertain(self) -> bool:
        return self.state is ClockState.UNSYNCHRONISED

    def check(self) -> ClockState | None:
        """Ask whether the clock is synchronised; the new state when it changed (or on the first call), else
        None."""
        state = self._probe()
        if state is self.state and self._asked:
            return None
        self._asked = True
        previous, self.state = self.state, state
        if state is ClockState.UNSYNCHRONISED:
            log.warning("the system clock is not synchronised (no NTP client has set it): readings are "
                        "flagged time_uncertain until it is")
        elif state is ClockState.SYNCHRONISED and previous is ClockState.UNSYNCHRONISED:
            log.info("the system clock is synchronised again")
        elif state is ClockState.UNKNOWN and previous is ClockState.UNKNOWN:
            log.info("cannot tell whether the system clock is synchronised (adjtimex refused, no "
                     "systemd-timesyncd); readings' time is taken as it is")
        for callback in self.on_state:
            callback(state)
        return state

    def jumped(self) -> Jump | None:
        """The step of the wall clock since the last look, when there was one."""
        wall, monotonic = self._wall_ms(), self._monotonic_ms()
        offset = wall - monotonic
        delta = offset - self._offset_ms
        self._offset_ms = offset  # slow drift is followed, never accumulated into a jump
        if abs(delta) <= JUMP_TOLERANCE_MS:
            return None
        self.jumps += 1
        jump = Jump(delta, wall - delta, wall)
        log.log(logging.WARNING if jump.worth_a_warning else logging.INFO, "%s", jump.describe())
        for callback in self.on_jump:
            callback(jump)
        return jump


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def _duration(ms: int) -> str:
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"

