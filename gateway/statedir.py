"""The state directory: one gateway at a time, and files only its own user can read.

Two gateways on one state directory would share the buffer and the sequence counter and publish the
same sequence numbers with different readings. `StateLock` takes an exclusive `flock` on
`<state_dir>/lock` before anything in the directory is opened, and writes the holder's PID into the
file, so a second process is refused at once with the PID of the first. The kernel releases the
lock when its holder dies, even by SIGKILL, so a lock is never stale.

The directory is created 0700 and the files in it 0600, whatever the umask: the buffer holds
readings of city infrastructure, the OPC-UA client key lives here too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "lock"


class StateDirInUse(Exception):
    """Another process holds the state directory."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"the state directory {state_dir} is in use by {holder} (a gateway already runs with it); "
                         "stop that one first (systemctl stop municipal-gateway), or give this configuration "
                         "its own gateway.state_dir")
        self.pid = pid


def private_dir(path: Path) -> Path:
    """`path` (and missing parents) as a directory only its owner may enter."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        with contextlib.suppress(PermissionError):  # not ours to change (a shared parent): leave it
            path.chmod(0o700)
    return path


def private_file(path: Path) -> Path:
    """Make sure `path` exists and is readable and writable by its owner only, from its first byte."""
    private_dir(path.parent)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
    finally:
        os.close(descriptor)
    return path


def replace_file(path: Path, body: str) -> None:
    """Put `body` in `path` (0600) so that a power cut leaves the old content or the new, never part of one:
    written to a temporary file, synced, renamed over the old one, and the rename synced too."""
    private_dir(path.parent)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with open(descriptor, "w", encoding="utf-8") as file:
            file.write(body)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)  # a full disk: leave no half-written file behind
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class StateLock:
    """The exclusive lock on a state directory, held until `release()` (or the process ends)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._descriptor: int | None = None

    def acquire(self) -> StateLock:
        """Take the lock or raise StateDirInUse naming the holder; returns self."""
        path = private_dir(self.state_dir) / LOCK_FILE
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _pid_in(descriptor)
            os.close(descriptor)
            raise StateDirInUse(self.state_dir, pid) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        self._descriptor = descriptor
        return self

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing drops the flock
            self._descriptor = None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()


def holder(state_dir: Path) -> int | None:
    """The PID of the process holding the state directory's lock, None when nobody does."""
    path = state_dir / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _pid_in(descriptor)
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return None
    finally:
        os.close(descriptor)


def _pid_in(descriptor: int) -> int | None:
    try:
        text = os.pread(descriptor, 32, 0).decode("ascii", errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
