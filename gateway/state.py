"""Each device's last known status, kept across restarts for `municipal-gateway buffer` and the next start.

A small JSON document that changes only when a device changes state (and once a minute with its counters),
rewritten whole and atomically (gateway/statedir.py) on each change, so a power cut or a full disk leaves the
previous version, never half of one. The reading stream never goes here: it lives in the SQLite buffer.

The file keeps the layout of the document store earlier versions used (`{"_default": {"1": {...}, ...}}`),
so an upgrade and a downgrade both read it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gateway.statedir import replace_file

log = logging.getLogger(__name__)


class DeviceRegistry:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._devices = {str(d["device"]): d for d in _load(path)}
        self._write_failed = False

    def record(self, status: dict[str, Any]) -> None:
        self._devices[str(status["device"])] = status
        body = {"_default": {str(n): d for n, d in enumerate(self._devices.values(), start=1)}}
        try:
            replace_file(self._path, json.dumps(body, indent=1, ensure_ascii=False))
        except OSError as exc:  # a full disk: the status still goes out on MQTT; the file catches up later
            if not self._write_failed:
                log.warning("cannot keep the devices' status in %s (%s); trying again at the next change",
                            self._path, exc.strerror or exc)
            self._write_failed = True
        else:
            if self._write_failed:
                log.info("the devices' status is kept in %s again", self._path)
            self._write_failed = False

    def all(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self._devices.values()]

    def close(self) -> None:
        """Nothing is held open (each change is written whole)."""


def _load(path: Path) -> list[dict[str, Any]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        records = document["_default"].values()
        return [dict(r) for r in records if isinstance(r, dict) and "device" in r]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("cannot read the devices' last status from %s (%s); starting without it", path, exc)
        return []


def read_registry(path: Path) -> list[dict[str, Any]]:
    return DeviceRegistry(path).all()
