"""The system clock: is it synchronised (asked of the real kernel, also under the unit's system-call filter),
and did it jump (a wall clock that steps against the monotonic one)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.clock import ClockState, ClockWatch, Jump, kernel_clock_state

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which has python3-seccomp (libseccomp's own bindings)
PROBE = ("import sys; sys.path.insert(0, %r); from pathlib import Path; import gateway.clock as clock; "
         "clock.TIMESYNCD_FLAG = Path(sys.argv[1]); print(clock.kernel_clock_state(), clock.system_clock_state())")


def _seccomp_available() -> bool:
    found = subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True)
    return found.returncode == 0 and shutil.which("systemd-analyze") is not None


needs_seccomp = pytest.mark.skipif(
    not _seccomp_available(),
    reason="needs Debian's python3-seccomp and systemd-analyze (scripts/test.sh installs both)")


def _probe(prefix: list[str], flag: Path) -> list[str]:
    done = subprocess.run([*prefix, sys.executable, "-c", PROBE % str(ROOT), str(flag)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex is Linux's")
def test_the_kernel_says_whether_the_clock_is_synchronised() -> None:
    assert kernel_clock_state() in (ClockState.SYNCHRONISED, ClockState.UNSYNCHRONISED)


@needs_seccomp
def test_the_kernel_can_still_be_asked_under_the_units_system_call_filter(tmp_path: Path) -> None:
    # The unit allows adjtimex and clock_adjtime again after @privileged took them away; were they refused, the
    # state would be unknown.
    under_unit = _probe([SYSTEM_PYTHON, str(ROOT / "scripts" / "unit-seccomp.py")], tmp_path / "no-flag")
    assert under_unit[0] == str(kernel_clock_state())


@needs_seccomp
def test_where_adjtimex_is_refused_the_state_is_unknown_unless_timesyncd_left_its_flag(tmp_path: Path) -> None:
    refuse = ("import errno, os, sys, seccomp; f = seccomp.SyscallFilter(seccomp.ALLOW); "
              "[f.add_rule(seccomp.ERRNO(errno.EPERM), call) for call in ('adjtimex', 'clock_adjtime')]; "
              "f.load(); os.execv(sys.argv[1], sys.argv[1:])")
    prefix = [SYSTEM_PYTHON, "-c", refuse]
    assert _probe(prefix, tmp_path / "no-flag") == ["unknown", "unknown"]
    flag = tmp_path / "synchronized"
    flag.touch()
    assert _probe(prefix, flag) == ["unknown", "synchronised"]


class _Clocks:
    """A wall clock and a monotonic clock the test moves (the real ones cannot be made to jump here)."""

    def __init__(self) -> None:
        self.wall = 1_764_000_000_000
        self.monotonic = 5_000

    def advance(self, ms: int, wall_step: int = 0) -> None:
        self.monotonic += ms
        self.wall += ms + wall_step


def _watch(clocks: _Clocks, probe: list[ClockState] | None = None) -> ClockWatch:
    states = probe if probe is not None else [ClockState.SYNCHRONISED]
    return ClockWatch(probe=lambda: states[0], wall_ms=lambda: clocks.wall, monotonic_ms=lambda: clocks.monotonic)


def test_a_step_forwards_of_three_hours_is_one_jump_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    clocks = _Clocks()
    watch = _watch(clocks)
    seen: list[Jump] = []
    watch.on_jump.append(seen.append)
    clocks.advance(1000, wall_step=3 * 3_600_000)
    with caplog.at_level(logging.INFO, logger="gateway.clock"):
        jump = watch.jumped()
        clocks.advance(1000)
        assert watch.jumped() is None, "the new time is the normal time from then on"
    assert jump is not None and seen == [jump]
    assert jump.delta_ms == 3 * 3_600_000 and jump.after_ms == clocks.wall - 1000
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "forwards by 3.0 h" in warnings[0].getMessage()


def test_a_step_backwards_is_a_jump_but_slewing_is_not() -> None:
    clocks = _Clocks()
    watch = _watch(clocks)
    for _ in range(3600):  # an hour of an NTP client slewing at its fastest, 0.5 ms a second
        clocks.advance(1000, wall_step=1)
        assert watch.jumped() is None
    clocks.advance(1000, wall_step=-5000)
    jump = watch.jumped()
    assert jump is not None and jump.delta_ms == -5000 and jump.worth_a_warning


def test_a_small_forward_correction_is_a_jump_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    clocks = _Clocks()
    watch = _watch(clocks)
    clocks.advance(1000, wall_step=2500)
    with caplog.at_level(logging.INFO, logger="gateway.clock"):
        jump = watch.jumped()
    assert jump is not None and not jump.worth_a_warning
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def test_each_change_of_synchronisation_is_told_once() -> None:
    clocks = _Clocks()
    states = [ClockState.UNSYNCHRONISED]
    watch = _watch(clocks, states)
    told: list[ClockState] = []
    watch.on_state.append(told.append)
    assert watch.check() is ClockState.UNSYNCHRONISED and watch.uncertain
    assert watch.check() is None
    states[0] = ClockState.SYNCHRONISED
    assert watch.check() is ClockState.SYNCHRONISED and not watch.uncertain
    assert told == [ClockState.UNSYNCHRONISED, ClockState.SYNCHRONISED]
