"""The daemon's logging: one line per event, each thing said once.

The gateway logs a device's state changes itself (gateway/links.py: once when it starts failing, with the
reason; debug while it keeps failing; once when it recovers). What the protocol libraries log about the same
device, on every poll (pymodbus's "got the wrong transaction id" with hex dumps, its "Failed to connect" and
"Repeating...."; asyncua's "close_secure_channel was called but connection is closed"; asyncio's traceback
when a library's protocol choked on a malformed frame, after which the link is reopened), is moved to debug:
it is there with `--log-level debug`, and never floods the journal.
"""

from __future__ import annotations

import logging
import sys

LIBRARIES = ("pymodbus", "asyncua", "amqtt", "transitions")
# asyncio's words for a protocol whose data_received() raised (the transport is closed; the driver reconnects).
_CHOKED_PROTOCOL = ("Fatal error: protocol.", "Fatal read error on socket transport")


class LibraryChatter(logging.Filter):
    """On the daemon's handler: records of the protocol libraries become debug records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or not _from_a_library(record):
            return True
        shown = logging.getLogger(record.name).isEnabledFor(logging.DEBUG)  # --log-level debug
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return shown


def _from_a_library(record: logging.LogRecord) -> bool:
    if record.name.startswith(LIBRARIES):
        return True
    return record.name == "asyncio" and str(record.msg).startswith(_CHOKED_PROTOCOL)


def setup_logging(level: str | None) -> None:
    # journald adds its own timestamps; a terminal gets them from us.
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if sys.stderr.isatty() else \
        "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=(level or "info").upper(), format=fmt, stream=sys.stderr)
    debug = (level or "info") == "debug"
    for library in LIBRARIES:
        logging.getLogger(library).setLevel(logging.DEBUG if debug else logging.WARNING)
    # asyncua logs a traceback at ERROR when a server vanishes mid-publish; our driver reports it once, clearly.
    logging.getLogger("asyncua.client.ua_session").setLevel(logging.CRITICAL)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, LibraryChatter) for f in handler.filters):
            handler.addFilter(LibraryChatter())
