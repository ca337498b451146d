"""Runs the status listener beside the gateway, so that nothing it does can stop polling or publishing.

aiohttp is imported here, when the listener starts, and only when `status.enabled` is true. An address
that cannot be bound (a port another program took after `check` passed) or a password file that cannot
be read is logged once and tried again every RETRY seconds; an unexpected failure of the listener is
logged with its traceback and the listener is started afresh. `check` reports both before a start.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gateway.model.settings import StatusAuth, StatusSettings
from gateway.status.snapshot import SnapshotSource

log = logging.getLogger(__name__)

RETRY = 30.0  # seconds between attempts to start a listener that could not start


class StatusListener:
    def __init__(self, settings: StatusSettings) -> None:
        self._settings = settings
        self._last_problem: str | None = None
        self.serving = asyncio.Event()  # set while the address is bound and requests are answered

    @property
    def address(self) -> str:
        host = self._settings.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self._settings.port}/"

    async def run(self, source: SnapshotSource) -> None:
        """Serve `source`'s snapshots until cancelled; returns only when aiohttp is missing. Never raises
        anything else."""
        try:
            from gateway.status.server import StatusServer
        except ImportError as exc:
            log.error("status page not started: it needs aiohttp (pip install 'municipal-gateway[status]'): %s", exc)
            return
        settings = self._settings
        while True:
            try:
                server = StatusServer(settings.host, settings.port, source, settings.refresh,
                                      credentials(settings.auth))
                await server.start()
            except OSError as exc:
                self._problem(f"status page not started on {self.address}: {_reason(exc)}; trying again every "
                              f"{RETRY:g} s (municipal-gateway check says more)")
                await asyncio.sleep(RETRY)
                continue
            log.info("status page on %s%s", self.address, " (basic authentication)" if settings.auth else "")
            self._last_problem = None
            self.serving.set()
            try:
                await server.serve()
            except Exception:
                log.exception("status page failed; starting it again in %g s", RETRY)
            finally:
                self.serving.clear()
                await server.stop()
            await asyncio.sleep(RETRY)

    def _problem(self, message: str) -> None:
        log.log(logging.ERROR if message != self._last_problem else logging.DEBUG, "%s", message)
        self._last_problem = message


def credentials(auth: StatusAuth | None) -> tuple[str, str] | None:
    """(username, password), the password from the environment (already expanded) or its file; OSError when
    the file cannot be read."""
    if auth is None:
        return None
    if auth.password is not None:
        return auth.username, auth.password.get_secret_value()
    assert auth.password_file is not None
    return auth.username, read_password_file(auth.password_file)


def read_password_file(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def _reason(error: OSError) -> str:
    return f"{error.strerror or error} ({error.filename})" if error.filename else str(error.strerror or error)
