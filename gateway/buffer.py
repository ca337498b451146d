"""The store-and-forward buffer: an SQLite file in WAL mode.

Every poll result is committed in one transaction before it may be published,
and a message is deleted only after the broker has acknowledged it, so nothing
committed is lost while the uplink is down, across restarts or a power cut
(with `synchronous=full`).

Space is an operating condition, not a crash. The buffer keeps below a cap on what
SQLite really uses (its pages in use plus room for the WAL): the configured bytes, or
its own size plus a share of the filesystem's free space, whichever is smaller. Past
the cap the oldest, lowest-priority messages are dropped, in chunks, counted
persistently and recorded as `Drop`s (the seq ranges lost) for the pipeline to announce.
When a commit fails because the disk is full anyway (something else filled it), the
buffer keeps to the size it has from then on: it truncates the WAL, gives up a reserve
file it keeps for this moment so that deletes (acknowledged rows, drops) still find
room, and drops what still does not fit, counted and recorded all the same; it returns
to its normal cap by itself once space is free again. The WAL is checkpointed and
truncated whenever the broker has taken everything.

All SQLite work runs on one dedicated thread that owns the connection, so
the event loop never blocks on a disk write (an SD card fsync can take tens of
milliseconds) and SQLite never sees two threads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.model.readings import now_ms
from gateway.statedir import private_file
from gateway.tasks import OwnThread

log = logging.getLogger(__name__)

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
CREATE TABLE IF NOT EXISTS drops (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    reason TEXT NOT NULL,
    time_ms INTEGER NOT NULL
);
"""
# Rough per-row overhead on top of topic and body: what a row costs in SQLite's pages is measured (the
# ratio of pages in use to these estimates), the estimate only says which rows to drop.
_ROW_OVERHEAD = 48
# Why messages were dropped: the configured size was reached, or the filesystem left no more room (its free
# space, or its share of it, ran out).
SIZE_CAP = "size-cap"
DISK_FULL = "disk-full"
# A dropping episode ends once the buffer is below this share of its cap again.
ROOM_AGAIN = 0.9
# Past the cap, at least this share of it is freed at once, so a full buffer drops in chunks (a few
# ranges to announce), not a little on every commit.
DROP_CHUNK = 1 / 64
# Seconds between two WAL truncations while the buffer is empty.
_TRUNCATE_INTERVAL_MS = 10_000


class SequenceConflict(Exception):
    """The sequence numbers of a commit were already used: another process writes to this buffer."""


@dataclass(frozen=True, slots=True)
class Message:
    """What the pipeline commits: one MQTT message, carrying readings with seq first_seq..last_seq (0, 0 for a
    message without entries of its own: the announcement of drops)."""

    topic: str
    body: bytes
    priority: int = 0  # higher goes first and is dropped last (alarm events)
    first_seq: int = 0
    last_seq: int = 0
    created_ms: int = 0
    announces: tuple[int, ...] = ()  # the drops (by first_seq) this message tells of

    @property
    def entries(self) -> int:
        return self.last_seq - self.first_seq + 1 if self.first_seq else 0


@dataclass(frozen=True, slots=True)
class Drop:
    """Entries the buffer could not keep: seq first_seq..last_seq of one message."""

    first_seq: int
    last_seq: int
    reason: str  # SIZE_CAP or DISK_FULL
    time_ms: int

    @property
    def entries(self) -> int:
        return self.last_seq - self.first_seq + 1


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
    dropping: str | None = None  # SIZE_CAP or DISK_FULL while an episode of dropping lasts
    cap_bytes: int | None = None  # what the buffer may use now (pages and WAL)


@dataclass(frozen=True, slots=True)
class _Committed:
    """What a commit did, told back to the event loop."""

    stored: bool  # False: the disk was too full even for these messages (they are among the drops)
    dropped: list[Drop]
    dropping: str | None
    fresh: list[StoredMessage] | None = None  # the rows as stored, for the publisher; None: forget the fresh ones


class Buffer:
    def __init__(self, connection: sqlite3.Connection, thread: OwnThread, path: Path,
                 space: _Space, depth: BufferStats, drops: list[Drop]) -> None:
        self._db = connection
        self._thread = thread
        self._path = path
        self._space = space
        self._size = depth.bytes  # the rows' estimated bytes (see _ROW_OVERHEAD)
        self._next_seq = depth.last_seq + 1
        # What waits, kept in step with every commit, drop and acknowledgement (on the buffer thread), so
        # depth() costs no table scan: a status page asks every second, and a full buffer has a million rows.
        self._depth = _Depth(depth.messages, depth.readings, depth.dropped_messages, depth.dropped_readings,
                             depth.last_seq)
        self._last_truncate_ms = 0
        # Drops not yet in the drops table (the disk was too full to write them); on the buffer thread.
        self._unstored: list[Drop] = []
        # On the event loop: drops not yet announced, and the episode of dropping going on.
        self.unannounced: list[Drop] = drops
        self.dropping: str | None = None
        # Set by every commit (and at open when rows are waiting): the publisher waits on it.
        self.new_data = asyncio.Event()
        # Hand-over: while the publisher has caught up with what is stored, each commit also gives it the rows it
        # stored, so a connected gateway never reads back what it has just written. `_hand_over` lives on the
        # buffer thread (a fetch that caught up turns it on; a drop or stop_hand_over turns it off), `fresh` on
        # the event loop, in commit order.
        self._hand_over = False
        # While handing over: rows after this id reach the publisher through `fresh` only, so a fetch, which may
        # run before the loop has put a commit's rows in `fresh`, never returns them as well.
        self._handed_after = 0
        self.fresh: collections.deque[StoredMessage] = collections.deque()

    @classmethod
    async def open(cls, path: Path, max_bytes: int, synchronous: Literal["full", "normal"] = "full",
                   free_share: float = 0.5) -> Buffer:
        """`max_bytes`: what the buffer may use at most; `free_share`: of the space free on its filesystem."""
        private_file(path)  # SQLite gives its -wal and -shm files the database file's mode
        thread = OwnThread("buffer")

        def connect() -> Buffer:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            db.executescript(_SCHEMA)
            space = _Space(db, path, max_bytes, free_share)
            stats = _read_stats(db)
            last_seq = max(stats.last_seq, db.execute("SELECT COALESCE(MAX(last_seq), 0) FROM messages").fetchone()[0])
            drops = [Drop(*row) for row in db.execute(
                "SELECT first_seq, last_seq, reason, time_ms FROM drops ORDER BY first_seq")]
            return cls(db, thread, path, space, dataclasses.replace(stats, last_seq=int(last_seq)), drops)

        buffer = await thread.run(connect)
        if buffer._size:
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
        """Store `messages` in one transaction (then wake the publisher). Space never makes this fail: what
        cannot be kept is dropped, counted and put in `unannounced`."""
        if not messages:
            return
        done = await self._thread.run(self._commit, messages)
        if done.fresh is None:
            self.fresh.clear()  # dropped rows may be among them: from here on the publisher reads the table
        else:
            self.fresh.extend(done.fresh)
        announced = {first for m in messages for first in m.announces} if done.stored else set()
        if announced:
            self.unannounced = [d for d in self.unannounced if d.first_seq not in announced]
        self.unannounced.extend(done.dropped)
        self._follow_episode(done.dropping)
        self.new_data.set()

    async def fetch(self, limit: int, exclude: Collection[int] = (), live_after: int = 0,
                    hand_over: bool = False) -> list[StoredMessage]:
        """Up to `limit` stored messages in the order they are to be sent: alarm events (and anything else of
        a higher priority) first, oldest first; then the readings committed after row `live_after` (live),
        oldest first; then the older ones (the history that waited across an outage), oldest first.
        `hand_over`: when this fetch gets everything waiting (but `exclude`), commits from now on put their rows
        in `fresh` too."""
        return await self._thread.run(self._fetch, limit, tuple(exclude), live_after, hand_over)

    def take_fresh(self, limit: int) -> list[StoredMessage]:
        """Up to `limit` of the rows handed over by commits, oldest first (see `fresh`)."""
        fresh = self.fresh
        return [fresh.popleft() for _ in range(min(limit, len(fresh)))]

    async def stop_hand_over(self) -> None:
        """The publisher is no longer connected: commits stop handing over rows, and those handed over are
        forgotten (they are in the table, read at the next connection)."""
        await self._thread.run(setattr, self, "_hand_over", False)
        self.fresh.clear()

    async def last_id(self) -> int:
        """The id of the newest row (0 when empty): what is committed from now on comes after it."""
        newest = "SELECT COALESCE(MAX(id), 0) FROM messages"
        return await self._thread.run(lambda: int(self._db.execute(newest).fetchone()[0]))

    async def ack(self, ids: Collection[int]) -> None:
        """Delete messages the broker has acknowledged (on a full disk too: see the module's docstring)."""
        if ids:
            await self._thread.run(self._ack, tuple(ids))

    @property
    def waiting(self) -> int:
        """Messages stored and not yet acknowledged (kept as rows come and go: no query)."""
        return self._depth.messages

    async def synchronous(self) -> str:
        """SQLite's own word for how it syncs commits on this connection: "full" or "normal"."""
        (level,) = await self._thread.run(lambda: self._db.execute("PRAGMA synchronous").fetchone())
        return {0: "off", 1: "normal", 2: "full", 3: "extra"}[int(level)]

    async def answers(self) -> bool:
        """True once the buffer's thread has run a no-op job: it is not stuck in SQLite (for the watchdog)."""
        await self._thread.run(lambda: None)
        return True

    async def stats(self) -> BufferStats:
        stats = await self._thread.run(_read_stats, self._db)
        cap = await self._thread.run(self._space.cap)
        return dataclasses.replace(stats, dropping=self.dropping, cap_bytes=cap)

    async def depth(self) -> BufferStats:
        """The same figures as stats() without scanning the table: the counts are kept as rows come and go,
        and the oldest waiting row is one lookup by id."""
        oldest = await self._thread.run(self._oldest_created_ms)
        cap = await self._thread.run(self._space.cap)
        depth = self._depth
        return BufferStats(depth.messages, depth.readings, self._size, oldest, depth.dropped_messages,
                           depth.dropped_readings, depth.last_seq, self.dropping, cap)

    async def close(self) -> None:
        await self._thread.run(self._db.close)
        self._thread.stop()

    def _follow_episode(self, dropping: str | None) -> None:
        if dropping == self.dropping:
            return
        if dropping is not None and self.dropping is None:
            log.warning("the buffer is full (%s): the oldest readings are dropped to make room for new ones, "
                        "counted and announced on MQTT", _REASONS[dropping])
        elif dropping is None:
            log.info("the buffer has room again; nothing more is dropped")
        self.dropping = dropping

    # -- on the buffer thread ------------------------------------------------------------------------------


    def _commit(self, messages: Sequence[Message]) -> _Committed:
        self._space.look_for_room()
        try:
            return self._finish(True, *self._store(messages))
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
        return self._store_on_a_full_disk(messages)

    def _store_on_a_full_disk(self, messages: Sequence[Message]) -> _Committed:
        """The disk is full: keep to the size the buffer has, make room by truncating the WAL and, if that is
        not enough, by giving up the reserve; drop (and record) what still does not fit."""
        self._space.disk_is_full()
        for make_room in (self._truncate_wal, self._release_reserve):
            make_room()
            try:
                return self._finish(True, *self._store(messages))
            except sqlite3.OperationalError as exc:
                if not _is_full(exc):
                    raise
        lost = [Drop(m.first_seq, m.last_seq, DISK_FULL, now_ms()) for m in messages if m.entries]
        self._unstored.extend(lost)
        self._depth.dropped(lost)
        self._depth.last_seq = max([self._depth.last_seq, *(d.last_seq for d in lost)])
        return self._finish(False, lost, [])

    def _finish(self, stored: bool, dropped: list[Drop], fresh: list[StoredMessage] | None = None) -> _Committed:
        if dropped:
            self._hand_over, fresh = False, None
        return _Committed(stored, dropped, self._episode(dropped), fresh)

    def _store(self, messages: Sequence[Message]) -> tuple[list[Drop], list[StoredMessage] | None]:
        """Store `messages`: what it dropped to make room, and the rows stored, while handing over."""
        created = now_ms()
        rows = [(m.priority, m.topic, m.body, m.first_seq, m.last_seq, m.created_ms or created) for m in messages]
        added = sum(len(m.body) + len(m.topic) + _ROW_OVERHEAD for m in messages)
        numbered = [m for m in messages if m.entries]
        announced = [(first,) for m in messages for first in m.announces]
        with _transaction(self._db):
            if numbered:
                self._claim_sequence(min(m.first_seq for m in numbered), max(m.last_seq for m in numbered))
            self._db.executemany(
                "INSERT INTO messages (priority, topic, body, first_seq, last_seq, created_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)", rows)
            # One transaction on the one connection: the rows' ids are the consecutive ones ending here.
            last_id = int(self._db.execute("SELECT last_insert_rowid()").fetchone()[0]) if self._hand_over else 0
            self._record_drops(self._unstored)
            self._db.executemany("DELETE FROM drops WHERE first_seq = ?", announced)
            dropped, freed = self._drop_to_fit(self._size + added)
        # Only once the transaction has committed:
        self._size += added - freed
        self._unstored = []
        depth = self._depth
        depth.messages += len(rows) - len(dropped)
        depth.readings += sum(m.entries for m in messages) - sum(d.entries for d in dropped)
        depth.dropped(dropped)
        if numbered:
            depth.last_seq = max(depth.last_seq, max(m.last_seq for m in numbered))
        if not self._hand_over:
            return dropped, []
        first_id = last_id - len(rows) + 1
        return dropped, [StoredMessage(first_id + i, topic, body, priority, first_seq, last_seq, made)
                         for i, (priority, topic, body, first_seq, last_seq, made) in enumerate(rows)]

    def _claim_sequence(self, first_seq: int, last_seq: int) -> None:
        stored = _counter(self._db, "last_seq")
        if first_seq <= stored:
            # Only a second process on this file can have taken these numbers (the state lock should
            # have stopped it): committing would publish one seq for two different readings.
            raise SequenceConflict(f"sequence numbers from {first_seq} are already used (up to {stored}) "
                                   "by another process writing to this buffer")
        self._db.execute("UPDATE counters SET value = MAX(value, ?) WHERE name = 'last_seq'", (last_seq,))

    def _drop_to_fit(self, estimated: int) -> tuple[list[Drop], int]:
        """Drop the oldest messages of the lowest priority until what SQLite uses is below the cap (by a
        chunk); the drops and the estimated bytes freed. Messages without entries of their own are kept."""
        cap = self._space.cap()
        excess = self._space.used() - cap
        if excess <= 0:
            return [], 0
        # From bytes of pages to bytes of the rows' estimate, measured on what is stored now.
        per_page_byte = estimated / max(self._space.used_by_rows(), 1)
        to_free = (excess + cap * DROP_CHUNK) * per_page_byte
        reason = DISK_FULL if self._space.limited_by_disk(cap) else SIZE_CAP
        dropped_ids: list[tuple[int]] = []
        drops: list[Drop] = []
        freed = 0
        now = now_ms()
        priorities = [row[0] for row in self._db.execute("SELECT DISTINCT priority FROM messages ORDER BY priority")]
        for priority in priorities:
            # Walks one priority at a time in id order, which the index serves directly, and stops as soon as
            # enough is freed, so a full buffer does not sort its whole table on every commit.
            rows = self._db.execute(
                f"SELECT id, LENGTH(body) + LENGTH(topic) + {_ROW_OVERHEAD}, first_seq, last_seq "
                "FROM messages WHERE priority = ? AND first_seq > 0 ORDER BY id", (priority,))
            for row_id, size, first_seq, last_seq in rows:
                dropped_ids.append((row_id,))
                drops.append(Drop(first_seq, last_seq, reason, now))
                freed += size
                if freed >= to_free:
                    break
            rows.close()
            if freed >= to_free:
                break
        self._db.executemany("DELETE FROM messages WHERE id = ?", dropped_ids)
        self._record_drops(drops)
        return drops, freed

    def _record_drops(self, drops: Sequence[Drop]) -> None:
        if not drops:
            return
        self._db.executemany("INSERT OR IGNORE INTO drops VALUES (?, ?, ?, ?)",
                             [(d.first_seq, d.last_seq, d.reason, d.time_ms) for d in drops])
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped_messages'", (len(drops),))
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped_readings'",
                         (sum(d.entries for d in drops),))

    def _episode(self, dropped: list[Drop]) -> str | None:
        """The episode of dropping after a commit: it lasts from a drop until the buffer has room again."""
        if dropped:
            return dropped[-1].reason
        if self.dropping is None or self._space.used() > ROOM_AGAIN * self._space.cap():
            return self.dropping  # read from the event loop's side: only that side changes it
        return None

    def _fetch(self, limit: int, exclude: tuple[int, ...], live_after: int, hand_over: bool) -> list[StoredMessage]:
        # Rows in flight are skipped in Python rather than with NOT IN, so each query stays a plain index scan.
        skip = set(exclude)
        found: list[StoredMessage] = []
        handed_after = self._handed_after if self._hand_over else None
        for where, arguments in (("priority > 0", ()), ("priority = 0 AND id > ?", (live_after,)),
                                 ("priority = 0 AND id <= ?", (live_after,))):
            cursor = self._db.execute(
                "SELECT id, topic, body, priority, first_seq, last_seq, created_ms FROM messages "
                f"WHERE {where} ORDER BY priority DESC, id", arguments)
            for row in cursor:
                if row[0] not in skip and (handed_after is None or row[0] <= handed_after):
                    found.append(StoredMessage(*row))
                    if len(found) >= limit:
                        break
            cursor.close()
            if len(found) >= limit:
                break
        if hand_over and len(found) < limit and not self._hand_over:
            # All that waits is in hand: the rows of the next commits are handed over.
            self._hand_over = True
            self._handed_after = int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0])
        return found

    def _ack(self, ids: tuple[int, ...]) -> None:
        for make_room in (None, self._truncate_wal, self._release_reserve):
            if make_room is not None:
                make_room()
            try:
                self._delete(ids)
                break
            except sqlite3.OperationalError as exc:
                if not _is_full(exc):
                    raise
        else:
            log.warning("a full disk leaves no room even to delete %d acknowledged messages; they will be "
                        "sent again (and arrive twice)", len(ids))
            return
        if self._size == 0 and now_ms() - self._last_truncate_ms >= _TRUNCATE_INTERVAL_MS:
            self._truncate_wal()  # the broker has taken everything: give the WAL's space back

    def _delete(self, ids: tuple[int, ...]) -> None:
        freed = messages = readings = 0
        with _transaction(self._db):
            for chunk in _chunks(ids, 500):
                marks = ",".join("?" * len(chunk))
                count, size, entries = self._db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(LENGTH(body) + LENGTH(topic) + {_ROW_OVERHEAD}), 0), "
                    f"COALESCE(SUM({_ENTRIES}), 0) FROM messages WHERE id IN ({marks})", chunk).fetchone()
                freed, messages, readings = freed + size, messages + count, readings + entries
                self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
        self._size -= freed
        self._depth.messages -= messages
        self._depth.readings -= readings

    def _oldest_created_ms(self) -> int | None:
        row = self._db.execute("SELECT created_ms FROM messages ORDER BY id LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def _truncate_wal(self) -> None:
        """Checkpoint the WAL into the database and truncate it (when the disk lets the database grow)."""
        self._last_truncate_ms = now_ms()
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise

    def _release_reserve(self) -> None:
        self._space.release_reserve()
        self._truncate_wal()


@dataclass(slots=True)
class _Depth:
    """Counts of what waits in the buffer and of what it dropped (on the buffer thread)."""

    messages: int = 0
    readings: int = 0
    dropped_messages: int = 0
    dropped_readings: int = 0
    last_seq: int = 0

    def dropped(self, drops: Sequence[Drop]) -> None:
        self.dropped_messages += len(drops)
        self.dropped_readings += sum(d.entries for d in drops)


# The entries (seq numbers) a row carries; an announcement of drops has none.
_ENTRIES = "CASE WHEN first_seq > 0 THEN last_seq - first_seq + 1 ELSE 0 END"

_REASONS = {SIZE_CAP: "it reached its size cap", DISK_FULL: "the disk is full"}


def _is_full(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


class _Space:
    """What the buffer may use on its filesystem, measured in SQLite's pages (on the buffer thread).

    The cap covers the pages in use and room for the WAL: SQLite checkpoints it every `wal_pages` pages and
    truncates it back to that size, and a transaction may carry it past before the checkpoint, so the room is
    twice that. A reserve file beside the buffer, as large as that room, holds space for the moment the disk
    fills: released, it lets deletes and the WAL go on.
    """

    def __init__(self, db: sqlite3.Connection, path: Path, max_bytes: int, free_share: float) -> None:
        self._db = db
        self._path = path
        self._max_bytes = max_bytes
        self._free_share = free_share
        self.page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        self._full_cap: int | None = None  # the size kept to since the disk filled
        wal_pages = self._wal_pages(self.cap())
        db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
        db.execute(f"PRAGMA journal_size_limit={wal_pages * self.page_size}")
        self.wal_room = 2 * wal_pages * self.page_size
        self.reserve = path.with_name(path.name + ".reserve")
        self._make_reserve()

    def limited_by_disk(self, cap: int) -> bool:
        """Whether `cap` is what the filesystem leaves, not the configured size."""
        return self._full_cap is not None or cap < self._max_bytes

    def cap(self) -> int:
        """Bytes the buffer may use now: pages in use plus room for the WAL."""
        if self._full_cap is not None:
            return self._full_cap
        return min(self._max_bytes, self._own_bytes() + int(self._free_share * self._free_bytes()))

    def used(self) -> int:
        return self.used_by_rows() + self.wal_room

    def used_by_rows(self) -> int:
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self.page_size

    def disk_is_full(self) -> None:
        if self._full_cap is None:
            self._full_cap = self.used()

    def look_for_room(self) -> None:
        """After the disk filled: back to the normal cap once there is room again for the reserve and more."""
        if self._full_cap is not None and self._free_bytes() > 2 * self.wal_room:
            self._full_cap = None
            self._make_reserve()

    def release_reserve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.reserve.unlink()
            log.warning("the disk is full: the buffer gave up its reserve (%s)", self.reserve)

    def _make_reserve(self) -> None:
        try:
            if not self.reserve.exists():
                descriptor = os.open(self.reserve, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    os.posix_fallocate(descriptor, 0, self.wal_room)
                finally:
                    os.close(descriptor)
        except OSError as exc:  # no room for it now: look again when there is
            with contextlib.suppress(OSError):
                self.reserve.unlink()
            log.debug("no reserve for the buffer yet: %s", exc)

    def _own_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += (self._path.parent / (self._path.name + suffix)).stat().st_size
        return total

    def _free_bytes(self) -> int:
        stat = os.statvfs(self._path.parent)
        return stat.f_bavail * stat.f_frsize

    def _wal_pages(self, cap: int) -> int:
        """Checkpoint the WAL every 1/16 of the cap (between 16 and SQLite's default of 1000 pages)."""
        return max(16, min(1000, cap // self.page_size // 16))


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
        f"SELECT COUNT(*), COALESCE(SUM({_ENTRIES}), 0), "
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
