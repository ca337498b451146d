"""The audit log: every command the gateway received and what came of it, in SQLite in the state directory.

An accepted command is committed (synchronous=FULL) before it goes to the device, and its result after, so
the log survives a power cut or SIGKILL: a command whose result is missing when the gateway starts again was
interrupted mid-way, and gets a `failed` result with reason `interrupted` (what the device did is unknown).
The log is bounded: past `max_entries` the oldest entries go. Writes are group-committed on a thread of
their own, so a flood of refused commands costs one disk sync per batch and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.model.readings import format_time_ms, now_ms
from gateway.statedir import private_file
from gateway.tasks import OwnThread, commit_until_cancelled

AUDIT_FILE = "audit.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    command_id TEXT,
    status TEXT,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_command ON audit (command_id);
"""

Entry = dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditRow:
    seq: int
    ts_ms: int
    kind: str  # "command": accepted, about to go to the device; "result": what came of a command
    command_id: str | None
    status: str | None
    entry: Entry


class AuditLog:
    def __init__(self, db: sqlite3.Connection, thread: OwnThread, max_entries: int) -> None:
        self._db = db
        self._thread = thread
        self._max_entries = max_entries
        self._pending: list[tuple[str, Entry, asyncio.Future[int]]] = []
        self._wake = asyncio.Event()

    @classmethod
    async def open(cls, path: Path, max_entries: int) -> AuditLog:
        private_file(path)
        thread = OwnThread("audit")

        def connect() -> sqlite3.Connection:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            return db

        return cls(await thread.run(connect), thread, max_entries)

    async def run(self) -> None:
        """Commit what is appended until cancelled; then what is still waiting."""
        await commit_until_cancelled(self._wake, self._commit_pending, lambda: bool(self._pending))

    def append(self, kind: str, entry: Entry) -> asyncio.Future[int]:
        """Queue one entry; the future is its sequence number in the log, once committed."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((kind, entry, done))
        self._wake.set()
        return done

    async def interrupted(self) -> list[Entry]:
        """Commands accepted but never given a result (the gateway stopped or was killed mid-way)."""
        rows = await self._thread.run(lambda: self._db.execute(
            "SELECT c.entry FROM audit c WHERE c.kind = 'command' AND NOT EXISTS "
            "(SELECT 1 FROM audit r WHERE r.kind = 'result' AND r.command_id = c.command_id)").fetchall())
        return [json.loads(row[0]) for row in rows]

    async def recent_results(self, since_ms: int) -> list[Entry]:
        """The results logged since `since_ms` (to answer a redelivered command after a restart)."""
        rows = await self._thread.run(lambda: self._db.execute(
            "SELECT entry FROM audit WHERE kind = 'result' AND ts_ms >= ? ORDER BY seq", (since_ms,)).fetchall())
        return [json.loads(row[0]) for row in rows]

    async def close(self) -> None:
        await self._thread.run(self._db.close)
        self._thread.stop()

    async def _commit_pending(self) -> None:
        self._wake.clear()
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            seqs = await self._thread.run(self._insert, [(kind, entry) for kind, entry, _ in batch])
        except sqlite3.Error as exc:
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        for (_, _, done), seq in zip(batch, seqs, strict=True):
            if not done.done():
                done.set_result(seq)

    def _insert(self, entries: Sequence[tuple[str, Entry]]) -> list[int]:
        now = now_ms()
        seqs = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for kind, entry in entries:
                cursor = self._db.execute(
                    "INSERT INTO audit (ts_ms, kind, command_id, status, entry) VALUES (?, ?, ?, ?, ?)",
                    (now, kind, _text(entry.get("id")), _text(entry.get("status")),
                     json.dumps(entry, separators=(",", ":"))))
                seqs.append(int(cursor.lastrowid or 0))
            self._db.execute("DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?", (self._max_entries,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return seqs



def read_audit(path: Path, limit: int = 100) -> list[AuditRow]:
    """The newest `limit` entries, oldest first (for `municipal-gateway audit`); read only."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, ts_ms, kind, command_id, status, entry FROM audit ORDER BY seq DESC LIMIT ?",
                          (limit,)).fetchall()
    finally:
        db.close()
    return [AuditRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in reversed(rows)]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def iter_lines(rows: Sequence[AuditRow]) -> Iterator[str]:
    """One line per entry, for people."""
    for row in rows:
        e = row.entry
        what = f"{e.get('device')}/{e.get('point')} = {json.dumps(e.get('value'))}"
        if row.kind == "command":
            yield f"{format_time_ms(row.ts_ms)}  {row.command_id}  accepted  {what}  from {e.get('source') or '?'}"
        else:
            detail = e.get("reason") or e.get("confirmation") or ""
            back = f"  read back {json.dumps(e['read_back'])}" if "read_back" in e else ""
            yield f"{format_time_ms(row.ts_ms)}  {row.command_id}  {row.status}  {what}  {detail}{back}"
