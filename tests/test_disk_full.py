"""A full disk is an operating condition: the buffer on a small real filesystem (a tmpfs mounted for the test)
that something else fills up.

Mounting needs root (CI runs as root); elsewhere these tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.buffer import DISK_FULL, Buffer, Message
from simulators.modbus import ModbusSimulator
from tests.brokers import Received, eventually
from tests.conftest import BrokerFactory, SubscriberFactory
from tests.e2e import modbus_device, running, write_config

MIB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({mounted.stderr.strip() or 'mount failed'}): "
                    "the full-disk tests need root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of the filesystem, as a runaway log would."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = 65536
        while size:  # ever smaller writes, down to the last byte
            try:
                os.write(descriptor, b"\0" * size)
            except OSError:
                size //= 2
    finally:
        os.close(descriptor)
    return filler


def batch(seq: int) -> Message:
    return Message(topic=f"t/{seq}", body=os.urandom(1500), first_seq=seq, last_seq=seq)


async def test_on_a_full_disk_the_buffer_keeps_storing_the_newest_and_accounts_for_every_seq(
        small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = small_disk / "buffer.sqlite"
    buffer = await Buffer.open(path, max_bytes=64 * MIB, free_share=1.0)
    for seq in range(1, 201):
        await buffer.commit([batch(seq)])
    filler = fill(small_disk)
    for seq in range(201, 3001):  # 4 MB more onto a full disk: none of it raises
        await buffer.commit([batch(seq)])
    assert buffer.dropping == DISK_FULL
    assert "gave up its reserve" in caplog.text, "SQLite itself found the disk full"
    stored = {m.first_seq for m in await buffer.fetch(100_000)}
    dropped = {seq for d in buffer.unannounced for seq in range(d.first_seq, d.last_seq + 1)}
    assert 3000 in stored, "the newest reading is kept"
    assert stored | dropped == set(range(1, 3001)) and not stored & dropped, "every seq is kept or announced"
    assert (await buffer.stats()).dropped_readings == len(dropped)

    # The broker takes everything: acknowledged rows can be deleted on the full disk.
    await buffer.ack([m.id for m in await buffer.fetch(100_000)])
    assert (await buffer.stats()).messages == 0

    filler.unlink()  # space returns: the buffer is itself again
    await buffer.commit([batch(3001)])
    assert buffer.dropping is None
    assert (small_disk / "buffer.sqlite.reserve").exists(), "the reserve is made again"
    await buffer.close()


async def test_a_buffer_opened_on_a_full_disk_still_works(small_disk: Path) -> None:
    filler = fill(small_disk)
    os.truncate(filler, filler.stat().st_size - 512 * 1024)  # a little room, for SQLite's first pages
    path = small_disk / "buffer.sqlite"
    buffer = await Buffer.open(path, max_bytes=64 * MIB)
    for seq in range(1, 1001):
        await buffer.commit([batch(seq)])
    stored = {m.first_seq for m in await buffer.fetch(100_000)}
    dropped = {seq for d in buffer.unannounced for seq in range(d.first_seq, d.last_seq + 1)}
    assert 1000 in stored and stored | dropped == set(range(1, 1001))
    await buffer.close()


# -- the whole gateway ------------------------------------------------------------------------------------------

def seqs_in(messages: list[Received]) -> set[int]:
    found: set[int] = set()
    for message in messages:
        body = json.loads(message.payload)
        for key in ("readings", "events", "windows"):
            found.update(entry["seq"] for entry in body.get(key, []))
    return found


def dropped_in(messages: list[Received]) -> set[int]:
    return {seq for m in messages if m.topic == DROPPED for r in json.loads(m.payload)["dropped"]
            for seq in range(r["first_seq"], r["last_seq"] + 1)}


def buffer_full_events(messages: list[Received]) -> list[str]:
    return [e["event"] for m in messages if m.topic == GATEWAY_ALARMS for e in json.loads(m.payload)["events"]
            if e["alarm"] == "buffer-full"]


GATEWAY_ALARMS = "city/gateway/test-gw/alarm"
DROPPED = "city/gateway/test-gw/dropped"


async def test_the_gateway_keeps_polling_on_a_full_disk_and_tells_the_centre_what_it_lost(
        small_disk: Path, tmp_path: Path, broker_factory: BrokerFactory, mqtt_subscriber: SubscriberFactory,
        plc: ModbusSimulator) -> None:
    broker = broker_factory(persistence=True)
    centre = await mqtt_subscriber(broker, "city/#", clean_session=False, client_id="centre")
    broker.stop()
    config = write_config(tmp_path, broker.port, [modbus_device("plc-1", plc.port, poll_interval=0.05)])
    main = yaml.safe_load(config.read_text())
    main["gateway"]["state_dir"] = str(small_disk / "state")
    main["buffer"].update(max_bytes=64 * MIB, free_share=1.0)  # the disk, not the cap, is the limit
    config.write_text(yaml.safe_dump(main))
    async with running(config) as gateway:
        await eventually(lambda: gateway.pipeline is not None and gateway.pipeline.entries_committed >= 30,
                         "readings buffered with the broker down")
        pipeline = gateway.pipeline
        assert pipeline is not None
        filler = fill(small_disk)
        await eventually(lambda: pipeline.buffer_dropping == DISK_FULL, "the buffer meets the full disk")
        on_full_disk = pipeline.entries_committed
        await eventually(lambda: pipeline.entries_committed >= on_full_disk + 100, "polling goes on")
        filler.unlink()
        await eventually(lambda: pipeline.buffer_dropping is None, "room again")
        taken = pipeline.entries_committed
        broker.start()
        await centre.wait_for(lambda m: set(range(1, taken + 1)) <= seqs_in(m) | dropped_in(m),
                              "every seq delivered or announced as dropped")
        await centre.wait_for(lambda m: buffer_full_events(m) == ["raised", "cleared"], "buffer-full raised, cleared")
    assert dropped_in(centre.messages), "the full disk did cost readings"
    assert not dropped_in(centre.messages) & seqs_in(centre.messages), "nothing announced lost was delivered"
    reasons = {r["reason"] for m in centre.messages if m.topic == DROPPED for r in json.loads(m.payload)["dropped"]}
    assert reasons == {DISK_FULL}
