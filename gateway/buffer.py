"""The store-and-forward buffer: an SQLite file in WAL mode.

Every poll result is committed in one transaction before it may be published,
and a message is deleted only after the broker has acknowledged it, so nothing
committed is lost while the uplink is down, across restarts or a power cut
(with `synchronous=full`). When the file grows past its size cap the oldest,
lowest-priority messages are dropped first and counted, persistently.

All SQLite work runs on one dedicated thread that owns the connection, so
the event loop never blocks on a disk write (an SD card fsync can take tens of
milliseconds) and SQLite never sees two threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from gateway.model.readings import now_ms
from gateway.statedir import private_file

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    body BLOB NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_priority ON messages (priority DESC, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('last_seq', 0), ('dropped_messages', 0), ('dropped_readings', 0);
"""
# Rough per-row overhead on top of topic and body, so the cap tracks the file size closely enough.
_ROW_OVERHEAD = 48


class SequenceConflict(Exception):
    """The sequence numbers of a commit were already used: another process writes to this buffer."""


@dataclass(frozen=True, slots=True)
class Message:
    """What the pipeline commits: one MQTT message, carrying readings with seq first_seq..last_seq."""

    topic: str
    body: bytes
    priority: int = 0  # higher goes first and is dropped last (alarm events)
    first_seq: int = 0
    last_seq: int = 0
    created_ms: int = 0


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    topic: str
    body: bytes
    priority: int
    first_seq: int
    last_seq: int
    created_ms: int


@dataclass(frozen=True, slots=True)
class BufferStats:
    messages: int
    readings: int
    bytes: int
    oldest_created_ms: int | None
    dropped_messages: int
    dropped_readings: int
    last_seq: int


class Buffer:
    def __init__(self, connection: sqlite3.Connection, executor: ThreadPoolExecutor,
                 max_bytes: int, depth: BufferStats) -> None:
        self._db = connection
        self._executor = executor
        self._max_bytes = max_bytes
        self._size = depth.bytes
        self._next_seq = depth.last_seq + 1
        # What waits, kept in step with every commit, drop and acknowledgement (on the buffer thread), so
        # depth() costs no table scan: a status page asks every second, and a full buffer has a million rows.
        self._depth = _Depth(depth.messages, depth.readings, depth.dropped_messages, depth.dropped_readings,
                             depth.last_seq)
        # Set by every commit (and at open when rows are waiting): the publisher waits on it.
        self.new_data = asyncio.Event()

    @classmethod
    async def open(cls, path: Path, max_bytes: int,
                   synchronous: Literal["full", "normal"] = "full") -> Buffer:
        private_file(path)  # SQLite gives its -wal and -shm files the database file's mode
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")

        def connect() -> tuple[sqlite3.Connection, BufferStats]:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            db.executescript(_SCHEMA)
            stats = _read_stats(db)
            last_seq = max(stats.last_seq, db.execute("SELECT COALESCE(MAX(last_seq), 0) FROM messages").fetchone()[0])
            return db, dataclasses.replace(stats, last_seq=int(last_seq))

        loop = asyncio.get_running_loop()
        db, depth = await loop.run_in_executor(executor, connect)
        buffer = cls(db, executor, max_bytes, depth)
        if depth.bytes:
            buffer.new_data.set()
        return buffer

    def allocate_sequence(self, count: int) -> int:
        """Reserve `count` consecutive sequence numbers and return the first.

        Numbers are made durable by the commit that carries them; a number
        reserved but never committed (a crash in between) was never published,
        so reusing it after a restart cannot produce a duplicate downstream.
        """
        first = self._next_seq
        self._next_seq += count
        return first

    async def commit(self, messages: Sequence[Message]) -> None:
        """Store `messages` in one transaction (then wake the publisher)."""
        if not messages:
            return
        await self._run(self._commit, messages)
        self.new_data.set()

    async def fetch(self, limit: int, exclude: Collection[int] = (), live_after: int = 0) -> list[StoredMessage]:
        """Up to `limit` stored messages in the order they are to be sent: alarm events (and anything else of
        a higher priority) first, oldest first; then the readings committed after row `live_after` (live),
        oldest first; then the older ones (the history that waited across an outage), oldest first."""
        return await self._run(self._fetch, limit, tuple(exclude), live_after)

    async def last_id(self) -> int:
        """The id of the newest row (0 when empty): what is committed from now on comes after it."""
        return await self._run(lambda: int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]))

    async def ack(self, ids: Collection[int]) -> None:
        """Delete messages the broker has acknowledged."""
        if ids:
            await self._run(self._ack, tuple(ids))

    async def synchronous(self) -> str:
        """SQLite's own word for how it syncs commits on this connection: "full" or "normal"."""
        (level,) = await self._run(lambda: self._db.execute("PRAGMA synchronous").fetchone())
        return {0: "off", 1: "normal", 2: "full", 3: "extra"}[int(level)]

    async def stats(self) -> BufferStats:
        return await self._run(_read_stats, self._db)

    async def depth(self) -> BufferStats:
        """The same figures as stats() without scanning the table: the counts are kept as rows come and go,
        and the oldest waiting row is one lookup by id."""
        oldest = await self._run(self._oldest_created_ms)
        depth = self._depth
        return BufferStats(depth.messages, depth.readings, self._size, oldest, depth.dropped_messages,
                           depth.dropped_readings, depth.last_seq)

    async def close(self) -> None:
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)

    # -- on the buffer thread ------------------------------------------------------------------------------

    async def _run(self, function: Callable[..., _T], *args: object) -> _T:
        # Shielded: once handed to the buffer thread, a job always runs, even if the caller is cancelled.
        # Otherwise a commit queued behind a fetch could be dropped at shutdown, losing what was read.
        job = asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        return await asyncio.shield(job)

    def _commit(self, messages: Sequence[Message]) -> None:
        created = now_ms()
        rows = [(m.priority, m.topic, m.body, m.first_seq, m.last_seq, m.created_ms or created) for m in messages]
        added = sum(len(m.body) + len(m.topic) + _ROW_OVERHEAD for m in messages)
        last_seq = max(m.last_seq for m in messages)
        first_seq = min(m.first_seq for m in messages)
        with _transaction(self._db):
            stored = _counter(self._db, "last_seq")
            if first_seq <= stored:
                # Only a second process on this file can have taken these numbers (the state lock should
                # have stopped it): committing would publish one seq for two different readings.
                raise SequenceConflict(f"sequence numbers from {first_seq} are already used (up to {stored}) "
                                       "by another process writing to this buffer")
            self._db.executemany(
                "INSERT INTO messages (priority, topic, body, first_seq, last_seq, created_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("UPDATE counters SET value = MAX(value, ?) WHERE name = 'last_seq'", (last_seq,))
            dropped = self._drop_oldest(self._size + added - self._max_bytes)
        # Only once the transaction has committed:
        self._size += added - dropped.bytes
        depth = self._depth
        depth.messages += len(rows) - dropped.messages
        depth.readings += sum(m.last_seq - m.first_seq + 1 for m in messages) - dropped.readings
        depth.dropped_messages += dropped.messages
        depth.dropped_readings += dropped.readings
        depth.last_seq = max(depth.last_seq, last_seq)

    def _drop_oldest(self, excess: int) -> _Depth:
        """Delete the oldest messages of the lowest priority until `excess` bytes are freed; return what was
        dropped (its `bytes` are the bytes freed).

        Walks one priority at a time in id order, which the index serves directly, and stops
        as soon as enough is freed, so a full buffer does not sort its whole table on every commit.
        """
        if excess <= 0:
            return _Depth()
        dropped_ids: list[tuple[int]] = []
        freed = readings = 0
        priorities = [row[0] for row in self._db.execute("SELECT DISTINCT priority FROM messages ORDER BY priority")]
        for priority in priorities:
            rows = self._db.execute(
                f"SELECT id, LENGTH(body) + LENGTH(topic) + {_ROW_OVERHEAD}, last_seq - first_seq + 1 "
                "FROM messages WHERE priority = ? ORDER BY id", (priority,))
            for row_id, size, count in rows:
                dropped_ids.append((row_id,))
                freed += size
                readings += count
                if freed >= excess:
                    break
            rows.close()
            if freed >= excess:
                break
        self._db.executemany("DELETE FROM messages WHERE id = ?", dropped_ids)
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped_messages'", (len(dropped_ids),))
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped_readings'", (readings,))
        return _Depth(len(dropped_ids), readings, bytes=freed)

    def _fetch(self, limit: int, exclude: tuple[int, ...], live_after: int) -> list[StoredMessage]:
        # Rows in flight are skipped in Python rather than with NOT IN, so each query stays a plain index scan.
        skip = set(exclude)
        found: list[StoredMessage] = []
        for where, arguments in (("priority > 0", ()), ("priority = 0 AND id > ?", (live_after,)),
                                 ("priority = 0 AND id <= ?", (live_after,))):
            cursor = self._db.execute(
                "SELECT id, topic, body, priority, first_seq, last_seq, created_ms FROM messages "
                f"WHERE {where} ORDER BY priority DESC, id", arguments)
            for row in cursor:
                if row[0] not in skip:
                    found.append(StoredMessage(*row))
                    if len(found) >= limit:
                        break
            cursor.close()
            if len(found) >= limit:
                break
        return found

    def _ack(self, ids: tuple[int, ...]) -> None:
        freed = messages = readings = 0
        with _transaction(self._db):
            for chunk in _chunks(ids, 500):
                marks = ",".join("?" * len(chunk))
                # Rows the size cap dropped meanwhile are not found, and so not counted twice.
                size, count, entries = self._db.execute(
                    f"SELECT COALESCE(SUM(LENGTH(body) + LENGTH(topic) + {_ROW_OVERHEAD}), 0), COUNT(*), "
                    f"COALESCE(SUM(last_seq - first_seq + 1), 0) FROM messages WHERE id IN ({marks})",
                    chunk).fetchone()
                freed, messages, readings = freed + size, messages + count, readings + entries
                self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
        self._size -= freed
        self._depth.messages -= messages
        self._depth.readings -= readings

    def _oldest_created_ms(self) -> int | None:
        row = self._db.execute("SELECT created_ms FROM messages ORDER BY id LIMIT 1").fetchone()
        return None if row is None else int(row[0])


@dataclass(slots=True)
class _Depth:
    """Counts of what waits in the buffer and what the cap dropped (or, from _drop_oldest, of one drop)."""

    messages: int = 0
    readings: int = 0
    dropped_messages: int = 0
    dropped_readings: int = 0
    last_seq: int = 0
    bytes: int = 0


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")  # inside: a failed COMMIT (a full disk) must roll back too
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _counter(db: sqlite3.Connection, name: str) -> int:
    row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def _chunks(items: tuple[int, ...], size: int) -> list[tuple[int, ...]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _read_stats(db: sqlite3.Connection) -> BufferStats:
    messages, readings, size, oldest = db.execute(
        f"SELECT COUNT(*), COALESCE(SUM(last_seq - first_seq + 1), 0), "
        f"COALESCE(SUM(LENGTH(body) + LENGTH(topic) + {_ROW_OVERHEAD}), 0), MIN(created_ms) FROM messages"
    ).fetchone()
    return BufferStats(int(messages), int(readings), int(size), oldest,
                       _counter(db, "dropped_messages"), _counter(db, "dropped_readings"), _counter(db, "last_seq"))


def read_stats(path: Path) -> BufferStats:
    """Stats of a buffer file, read without disturbing a daemon that has it open (for the CLI)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _read_stats(db)
    finally:
        db.close()
