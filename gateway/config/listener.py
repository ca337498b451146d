"""What `check` finds out about the status listener by trying it: the address can be bound, the password
file can be read, aiohttp is installed. Each problem is located like every other configuration error.

This runs at `check` (and so before every start under systemd, whose unit runs `check` first), not in
`load_config`: at run time the listener itself reports and retries what fails (gateway/status/listener.py),
and polling never waits for it. When a running gateway holds the state directory, a port in use is taken
to be that gateway's own listener (`check` before an upgrade runs beside it).
"""

from __future__ import annotations

import errno
import importlib.util
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config.errors import ConfigIssue, Location
from gateway.config.loader import GatewayConfig
from gateway.config.yamlsource import LocatedDict, YamlLoadError, load_yaml
from gateway.statedir import holder


def check_status_listener(config: GatewayConfig, environ: Mapping[str, str] | None = None) -> list[ConfigIssue]:
    status = config.main.status
    if not status.enabled:
        return []
    where = _Locations(config.main_file, environ)
    issues = []
    if importlib.util.find_spec("aiohttp") is None:
        issues.append(where.issue("enabled", "the status listener needs aiohttp, which is not installed; "
                                             "expected it beside the gateway (pip install 'municipal-gateway[status]'"
                                             "; the Debian package has it)"))
    if status.auth is not None and status.auth.password_file is not None:
        problem = _unreadable(status.auth.password_file)
        if problem:
            issues.append(where.issue("auth.password_file", problem))
    problem_key, problem = _cannot_bind(status.host, status.port)
    if problem and not (problem_key == "port" and holder(config.state_dir) is not None):
        issues.append(where.issue(problem_key, problem))
    return issues


def _unreadable(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        found = exc.strerror.lower() if exc.strerror else str(exc)
        fix = ("; create it, readable by the gateway's user only, or correct the path (relative to this file)"
               if isinstance(exc, FileNotFoundError) else "")
        return f"expected a readable file holding the password; found {found}: {path}{fix}"
    except UnicodeDecodeError:
        return f"expected a text file holding the password; found bytes that are not UTF-8: {path}"
    if not text.strip():
        return f"expected a file holding the password; found it empty: {path}"
    return None


def _cannot_bind(host: str, port: int) -> tuple[str, str | None]:
    """(the key to blame, what is wrong) when `host`:`port` cannot be listened on; (_, None) when it can."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return "host", f"expected an address of this machine; found {host!r}, which does not resolve ({exc.strerror})"
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listener does (asyncio's default)
            try:
                probe.bind(address)
            except OSError as exc:
                return _why_not(exc, host, port)
    return "port", None


def _why_not(error: OSError, host: str, port: int) -> tuple[str, str]:
    if error.errno == errno.EADDRINUSE:
        return "port", (f"expected a free port; found {port} on {host} already in use by another program "
                        f"(`ss -ltnp 'sport = :{port}'` names it); choose another status.port")
    if error.errno == errno.EADDRNOTAVAIL:
        return "host", (f"expected an address of this machine; found {host!r}, which no interface has "
                        "(`ip -brief address` lists them; 127.0.0.1 for this box only, 0.0.0.0 for every interface)")
    if error.errno == errno.EACCES:
        return "port", f"expected a port this user may listen on; found {port}: {error.strerror}"
    return "host", f"cannot listen on {host}:{port}: {error.strerror or error}"


class _Locations:
    """Where the keys of the main file's `status:` are written (re-read: the loaded configuration has no places)."""

    def __init__(self, main_file: Path, environ: Mapping[str, str] | None) -> None:
        self._file = main_file
        try:
            raw: Any = load_yaml(main_file, environ)
        except YamlLoadError:  # it loaded a moment ago; a file edited since: name the file alone
            raw = None
        status = raw.get("status") if isinstance(raw, LocatedDict) else None
        self._status = status if isinstance(status, LocatedDict) else None

    def issue(self, key: str, message: str) -> ConfigIssue:
        return ConfigIssue(self._where(key), f"status.{key}", message)

    def _where(self, key: str) -> Location:
        node: Any = self._status
        location = Location(str(self._file), 1, 1) if node is None else node.location
        for part in key.split("."):
            if not isinstance(node, LocatedDict) or part not in node:
                break
            location, node = node.where(part), node[part]
        return location
