"""One malloc arena: threads that allocate at once share glibc's main arena instead of keeping their own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Threads allocating (blocks above pymalloc's 512 bytes go to malloc) at the same time, then glibc's own account
# of its arenas: malloc_stats() prints one "Arena N:" paragraph per arena on stderr.
_PROBE = """
import ctypes, sys, threading
from gateway.memory import one_malloc_arena
if sys.argv[1] == "limit":
    assert one_malloc_arena()
start = threading.Barrier(4)
def allocate():
    start.wait()
    kept = [bytes(2000) for _ in range(2000)]
threads = [threading.Thread(target=allocate) for _ in range(4)]
for thread in threads: thread.start()
for thread in threads: thread.join()
ctypes.CDLL(None).malloc_stats()
"""


def arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    probe = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=env, timeout=60)
    assert probe.returncode == 0, probe.stderr
    return sum(line.startswith("Arena ") for line in probe.stderr.splitlines())


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="mallopt and malloc_stats are glibc's")
def test_threads_share_one_arena_once_limited() -> None:
    assert arenas("default") > 1  # what glibc does by itself: the probe would prove nothing otherwise
    assert arenas("limit") == 1


def test_the_environment_rules_when_it_says(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.memory import one_malloc_arena

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not one_malloc_arena()
