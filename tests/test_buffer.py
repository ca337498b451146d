"""The SQLite store-and-forward buffer: ordering, acknowledgement, persistence, the size cap."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from gateway.buffer import SIZE_CAP, Buffer, Message, read_stats


def message(seq: int, priority: int = 0, size: int = 10) -> Message:
    return Message(topic=f"t/{seq}", body=b"x" * size, priority=priority, first_seq=seq, last_seq=seq)


async def test_messages_come_back_oldest_first_and_leave_only_when_acked(tmp_path: Path) -> None:
    buffer = await Buffer.open(tmp_path / "b.sqlite", max_bytes=10**6)
    await buffer.commit([message(1), message(2)])
    await buffer.commit([message(3)])
    fetched = await buffer.fetch(10)
    assert [m.first_seq for m in fetched] == [1, 2, 3]
    await buffer.ack([fetched[0].id, fetched[2].id])
    assert [m.first_seq for m in await buffer.fetch(10)] == [2]
    await buffer.close()


async def test_fetch_skips_messages_in_flight(tmp_path: Path) -> None:
    buffer = await Buffer.open(tmp_path / "b.sqlite", max_bytes=10**6)
    await buffer.commit([message(i) for i in range(1, 6)])
    first = await buffer.fetch(2)
    second = await buffer.fetch(2, exclude=[m.id for m in first])
    assert [m.first_seq for m in first + second] == [1, 2, 3, 4]
    await buffer.close()


async def test_higher_priority_goes_first(tmp_path: Path) -> None:
    buffer = await Buffer.open(tmp_path / "b.sqlite", max_bytes=10**6)
    await buffer.commit([message(1), message(2, priority=5), message(3)])
    assert [m.first_seq for m in await buffer.fetch(10)] == [2, 1, 3]
    await buffer.close()


async def test_readings_committed_after_a_mark_go_before_the_older_ones_alarms_before_both(tmp_path: Path) -> None:
    buffer = await Buffer.open(tmp_path / "b.sqlite", max_bytes=10**6)
    await buffer.commit([message(1), message(2)])
    mark = await buffer.last_id()  # the publisher reconnects: what is stored now is the history
    await buffer.commit([message(3), message(4, priority=5), message(5)])
    fetched = await buffer.fetch(10, live_after=mark)
    assert [m.first_seq for m in fetched] == [4, 3, 5, 1, 2]
    assert [m.first_seq for m in await buffer.fetch(2, live_after=mark)] == [4, 3], "the limit holds across groups"
    await buffer.close()


async def test_unacked_messages_and_sequence_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    buffer = await Buffer.open(path, max_bytes=10**6)
    first = buffer.allocate_sequence(3)
    await buffer.commit([Message("t", b"abc", first_seq=first, last_seq=first + 2)])
    acked = buffer.allocate_sequence(1)
    await buffer.commit([Message("t", b"d", first_seq=acked, last_seq=acked)])
    await buffer.ack([m.id for m in await buffer.fetch(10) if m.first_seq == acked])
    await buffer.close()

    reopened = await Buffer.open(path, max_bytes=10**6)
    assert reopened.new_data.is_set(), "a buffer with a backlog must wake the publisher at start"
    assert [(m.first_seq, m.last_seq) for m in await reopened.fetch(10)] == [(1, 3)]
    # The sequence continues past every number ever committed, even one whose message was acked and deleted.
    assert reopened.allocate_sequence(1) == acked + 1
    await reopened.close()


def on_disk(path: Path) -> int:
    """What the buffer's files take: the database and its WAL."""
    return sum(f.stat().st_size for f in (path, path.with_name(path.name + "-wal")) if f.exists())


async def test_size_cap_holds_what_sqlite_really_uses_and_drops_oldest_lowest_priority_first(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    cap = 512 * 1024
    buffer = await Buffer.open(path, max_bytes=cap, free_share=1.0)
    await buffer.commit([message(1, priority=9, size=200)])
    for seq in range(2, 402):  # 1.6 MB of messages into half a megabyte
        await buffer.commit([message(seq, size=4000)])
        assert on_disk(path) <= cap * 1.05, seq
    remaining = await buffer.fetch(1000)
    assert remaining[0].first_seq == 1, "the high-priority message must survive the cap"
    kept = [m.first_seq for m in remaining[1:]]
    assert kept == list(range(402 - len(kept), 402)), "only the newest ordinary messages are kept"
    dropped = [d.first_seq for d in buffer.unannounced]
    assert dropped == list(range(2, 402 - len(kept)))  # every message not kept is a drop to announce
    assert {d.reason for d in buffer.unannounced} == {SIZE_CAP} and buffer.dropping == SIZE_CAP
    stats = await buffer.stats()
    assert stats.dropped_messages == stats.dropped_readings == len(dropped)
    await buffer.close()
    assert read_stats(path).dropped_readings == len(dropped)
    reopened = await Buffer.open(path, max_bytes=cap)
    assert [d.first_seq for d in reopened.unannounced] == dropped, "drops not yet announced survive a restart"
    await reopened.close()


async def test_an_announcement_of_drops_takes_them_off_the_list_in_the_same_transaction(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    buffer = await Buffer.open(path, max_bytes=256 * 1024, free_share=1.0)
    for seq in range(1, 200):
        await buffer.commit([message(seq, size=4000)])
    told = tuple(d.first_seq for d in buffer.unannounced[:3])
    await buffer.commit([Message("gw/dropped", b"{}", priority=2, announces=told)])
    assert told and not {d.first_seq for d in buffer.unannounced} & set(told)
    left = len(buffer.unannounced)
    await buffer.close()
    reopened = await Buffer.open(path, max_bytes=256 * 1024)
    assert len(reopened.unannounced) == left
    await reopened.close()


async def test_dropping_ends_once_the_broker_has_taken_enough(tmp_path: Path) -> None:
    buffer = await Buffer.open(tmp_path / "b.sqlite", max_bytes=256 * 1024, free_share=1.0)
    for seq in range(1, 200):
        await buffer.commit([message(seq, size=4000)])
    assert buffer.dropping == SIZE_CAP
    await buffer.ack([m.id for m in await buffer.fetch(1000)])
    await buffer.commit([message(200)])
    assert buffer.dropping is None
    await buffer.close()


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_both_sync_modes_open_and_are_what_sqlite_uses(tmp_path: Path, synchronous: str) -> None:
    buffer = await Buffer.open(tmp_path / "b.sqlite", max_bytes=10**6, synchronous=synchronous)
    await buffer.commit([message(1)])
    assert (await buffer.stats()).messages == 1
    assert await buffer.synchronous() == synchronous  # read back from SQLite, not from our setting
    await buffer.close()


async def test_a_commit_cancelled_while_waiting_for_the_buffer_thread_still_lands(tmp_path: Path) -> None:
    """At shutdown the pipeline's commit may be cancelled while the thread is busy with a fetch: not a loss."""
    path = tmp_path / "b.sqlite"
    buffer = await Buffer.open(path, max_bytes=10**6)
    release = threading.Event()
    busy = asyncio.ensure_future(buffer._thread.run(release.wait, 10))  # the thread is busy (as with a slow fetch)
    commit = asyncio.create_task(buffer.commit([message(1)]))
    await asyncio.sleep(0)  # let the commit queue up behind the busy job
    commit.cancel()
    release.set()
    await busy
    with pytest.raises(asyncio.CancelledError):
        await commit
    await buffer.close()
    assert read_stats(path).messages == 1


async def test_depth_keeps_the_figures_of_a_full_scan_through_commits_drops_acks_and_a_reopen(
        tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    buffer = await Buffer.open(path, max_bytes=256 * 1024, free_share=1.0)  # room for about 40 of the large ones

    async def same_as_a_scan() -> None:
        assert await buffer.depth() == await buffer.stats()

    await buffer.commit([Message("t/1", b"x" * 20, first_seq=1, last_seq=3), message(4)])
    await same_as_a_scan()
    for seq in range(5, 105):  # past the cap: drops
        await buffer.commit([message(seq, priority=seq % 2, size=4000)])
    await same_as_a_scan()
    assert (await buffer.depth()).dropped_messages > 0
    waiting = await buffer.fetch(3)
    await buffer.ack([row.id for row in waiting] + [10**6])  # an id that is gone already counts nothing
    await same_as_a_scan()
    await buffer.close()
    buffer = await Buffer.open(path, max_bytes=256 * 1024, free_share=1.0)
    await same_as_a_scan()
    await buffer.ack([row.id for row in await buffer.fetch(100)])
    await same_as_a_scan()
    assert (await buffer.depth()).oldest_created_ms is None
    await buffer.close()


async def test_once_the_publisher_has_caught_up_commits_hand_their_rows_over_as_stored(tmp_path: Path) -> None:
    buffer = await Buffer.open(tmp_path / "b.sqlite", max_bytes=10**6)
    await buffer.commit([message(1)])
    assert not buffer.fresh, "nobody has caught up yet"
    (first,) = await buffer.fetch(10, hand_over=True)  # everything that waits: caught up
    await buffer.commit([message(2), message(3, priority=10)])
    handed = buffer.take_fresh(10)
    assert [(m.first_seq, m.priority, m.body) for m in handed] == [(2, 0, b"x" * 10), (3, 10, b"x" * 10)]
    assert await buffer.fetch(10, exclude=[first.id], hand_over=True) == [], "never handed over and fetched too"
    await buffer.stop_hand_over()  # the connection dropped: back to reading the table
    stored = {m.id: m for m in await buffer.fetch(10, exclude=[first.id])}
    assert all(stored[m.id] == m for m in handed), "the same rows, ids included, as the table holds"
    await buffer.commit([message(4)])
    assert not buffer.fresh
    await buffer.close()


async def test_a_drop_ends_the_hand_over_so_nothing_dropped_is_sent(tmp_path: Path) -> None:
    buffer = await Buffer.open(tmp_path / "b.sqlite", max_bytes=256 * 1024, free_share=1.0)
    await buffer.fetch(10, hand_over=True)
    seq = 0
    while not buffer.unannounced:  # until the cap drops something
        seq += 1
        await buffer.commit([message(seq, size=4000)])
    assert not buffer.fresh
    await buffer.commit([message(seq + 1)])
    assert not buffer.fresh, "the table is read again until a fetch catches up"
    await buffer.close()
