"""Files a configuration refers to (certificates, keys, password files, trust directories), checked when it is
loaded: `check` then finds what `run` would meet, and names the setting and the file.

The gateway runs as its own system user (the unit's `User=`), while `check` is often run as root: as root,
`check` also checks a file against that user's rights (`run` started by hand as root reads as root). Files
under `$CREDENTIALS_DIRECTORY` are not: systemd hands the service its own copy of each credential
(`LoadCredential=`), whatever the source file's mode.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

SERVICE_USER = "municipal-gateway"


def file_problem(path: Path, directory: bool = False, as_service: bool = False) -> str | None:
    """Why the gateway could not read `path` (a file, or with `directory` a directory of files); None when
    it can. `as_service` (for `check`): run as root, also whether the service user could."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return "no such file or directory"
    except OSError as exc:
        return exc.strerror or str(exc)
    if directory and not stat.S_ISDIR(info.st_mode):
        return "not a directory"
    if not directory and not stat.S_ISREG(info.st_mode):
        return "a directory, not a file" if stat.S_ISDIR(info.st_mode) else "not a regular file"
    wanted = os.R_OK | os.X_OK if directory else os.R_OK
    if not os.access(path, wanted):
        return "permission denied"
    return _service_user_problem(path, info, directory) if as_service else None


def _service_user_problem(path: Path, info: os.stat_result, directory: bool) -> str | None:
    if os.geteuid() != 0 or _under_credentials(path):
        return None
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None  # not installed as a service here: nothing to compare with
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if SERVICE_USER in g.gr_mem}
    if not _allows(info, user.pw_uid, groups, 0o5 if directory else 0o4):
        return (f"not readable by the service user {SERVICE_USER} (mode {stat.S_IMODE(info.st_mode):04o}, "
                f"owner {_owner(info.st_uid)}); chown or chmod it, or hand it over with LoadCredential=")
    for parent in path.resolve().parents:
        try:
            if not _allows(parent.stat(), user.pw_uid, groups, 0o1):
                return f"its directory {parent} cannot be entered by the service user {SERVICE_USER}"
        except OSError:
            return None
    return None


def _allows(info: os.stat_result, uid: int, groups: set[int], bits: int) -> bool:
    """Whether the permission `bits` (rwx as 0o4, 0o2, 0o1) are granted to `uid` with `groups`."""
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid == uid:
        return (mode >> 6) & bits == bits
    if info.st_gid in groups:
        return (mode >> 3) & bits == bits
    return mode & bits == bits


def _under_credentials(path: Path) -> bool:
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    return credentials is not None and Path(credentials).resolve() in path.resolve().parents


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
