"""One gateway per state directory, and files only the gateway's user can read."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.buffer import Buffer, Message, SequenceConflict
from gateway.config.loader import load_config
from gateway.statedir import StateDirInUse, StateLock, holder
from tests.brokers import WAIT, Broker, eventually, free_port
from tests.e2e import modbus_device, write_config


def gateway(*args: str, umask: int | None = None) -> subprocess.Popen[str]:
    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.Popen([sys.executable, "-m", "gateway", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=set_umask)


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=WAIT)


async def test_a_second_gateway_on_one_state_directory_is_refused_naming_the_first(
        tmp_path: Path, broker: Broker) -> None:
    config = write_config(tmp_path, broker.port, [])
    state_dir = load_config(config).state_dir
    first = gateway("run", str(config))
    try:
        await eventually(lambda: holder(state_dir) == first.pid, "the first gateway to hold the state directory")
        second = gateway("run", str(config))
        _, err = second.communicate(timeout=WAIT)
        assert second.returncode == 2  # systemd does not restart on 2
        assert f"in use by process {first.pid}" in err and "Traceback" not in err
        read = gateway("read", str(config), "nothing")
        _, err = read.communicate(timeout=WAIT)
        assert read.returncode == 2
        buffer = gateway("buffer", str(config))  # read-only: welcome beside a running gateway
        out, _ = buffer.communicate(timeout=WAIT)
        assert buffer.returncode == 0 and f"gateway running: process {first.pid}" in out
    finally:
        stop(first)
    assert holder(state_dir) is None


async def test_a_gateway_killed_by_sigkill_leaves_no_lock_behind(tmp_path: Path, broker: Broker) -> None:
    config = write_config(tmp_path, broker.port, [])
    state_dir = load_config(config).state_dir
    first = gateway("run", str(config))
    await eventually(lambda: holder(state_dir) == first.pid, "the gateway to hold the state directory")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=WAIT)
    second = gateway("run", str(config))
    try:
        await eventually(lambda: holder(state_dir) == second.pid, "the restarted gateway to hold it")
    finally:
        stop(second)


def test_the_lock_names_its_holder_and_is_free_again_once_released(tmp_path: Path) -> None:
    with StateLock(tmp_path / "state"):
        assert holder(tmp_path / "state") == os.getpid()
        with pytest.raises(StateDirInUse, match=f"in use by process {os.getpid()}"):
            StateLock(tmp_path / "state").acquire()
    assert holder(tmp_path / "state") is None
    StateLock(tmp_path / "state").acquire().release()


async def test_two_writers_to_one_buffer_cannot_publish_one_seq_twice(tmp_path: Path) -> None:
    # Were the lock ever bypassed: the second writer's numbers were taken, and its commit is refused.
    first = await Buffer.open(tmp_path / "buffer.sqlite", 10**6)
    second = await Buffer.open(tmp_path / "buffer.sqlite", 10**6)
    try:
        seq = first.allocate_sequence(1)
        assert second.allocate_sequence(1) == seq  # both started from the same counter
        await first.commit([Message("t", b"a", first_seq=seq, last_seq=seq)])
        with pytest.raises(SequenceConflict, match="already used"):
            await second.commit([Message("t", b"b", first_seq=seq, last_seq=seq)])
        assert (await first.stats()).messages == 1
    finally:
        await first.close()
        await second.close()


async def test_what_the_gateway_creates_is_private_whatever_the_umask(tmp_path: Path, broker: Broker) -> None:
    # A device nobody answers for: its failing status is recorded in devices.json.
    config = write_config(tmp_path, broker.port, [modbus_device("plc-1", free_port())])
    state_dir = load_config(config).state_dir
    process = gateway("run", str(config), umask=0o000)
    try:
        await eventually(lambda: holder(state_dir) == process.pid, "the gateway to hold the state directory")
        await eventually(lambda: (state_dir / "devices.json").exists(), "the device's status recorded")
    finally:
        stop(process)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    names = {f.name for f in state_dir.iterdir() if f.is_file()}
    assert {"lock", "buffer.sqlite", "buffer.sqlite.reserve", "devices.json"} <= names
    for name in names:
        assert stat.S_IMODE((state_dir / name).stat().st_mode) == 0o600, name
