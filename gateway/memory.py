"""One malloc arena for the whole process (glibc).

glibc gives each thread that allocates an arena of its own; the gateway's few threads (the buffer's SQLite
thread, paho's network thread, the event loop's executor) would keep about 3 MB resident in theirs at
10,000 points, of which one shared arena takes back part: peak RSS 61 instead of 63 MB
(bench/modbus_mqtt_bench.py, README). They hardly ever allocate at the same moment, so sharing costs
nothing measurable. `MALLOC_ARENA_MAX` in the environment, when set, is left to rule.
"""

from __future__ import annotations

import ctypes
import os

_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def one_malloc_arena() -> bool:
    """Limit glibc to one arena; call before any thread starts. False where that is not glibc or the
    environment already decides."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_ARENA_MAX, 1))
