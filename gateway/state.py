"""Small state documents kept across restarts (device registry and last known status), in TinyDB.

These change only when a device changes state, so a JSON document store that
rewrites its file on each write is the right, simple tool. The reading stream
never goes here: it lives in the SQLite buffer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinydb import Query, TinyDB

from gateway.statedir import private_file


class DeviceRegistry:
    def __init__(self, path: Path) -> None:
        self._db = TinyDB(private_file(path), indent=1)

    def record(self, status: dict[str, Any]) -> None:
        self._db.upsert(status, Query().device == status["device"])

    def all(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self._db.all()]

    def close(self) -> None:
        self._db.close()


def read_registry(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    registry = DeviceRegistry(path)
    try:
        return registry.all()
    finally:
        registry.close()
