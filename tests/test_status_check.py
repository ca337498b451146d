"""`check` tries what only trying shows about the status listener, and reports each problem as a located
configuration error (file:line:column, key path, expected, found, the fix), exit 2 and no traceback."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.brokers import free_port
from tests.status_helpers import status_site


def check(config: Path, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"import sys\n{prelude}\nfrom gateway.cli import main\nsys.exit(main(['check', {str(config)!r}]))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def site(tmp_path: Path, port: int, **status: Any) -> Path:
    return status_site(tmp_path, free_port(), free_port(), port, **status)  # nothing needs to run for check


def located(result: subprocess.CompletedProcess[str], key: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = next((line for line in result.stderr.splitlines() if f": {key}: " in line), None)
    assert line is not None, result.stderr
    assert re.match(r"error: .*gateway\.yaml:\d+:\d+: ", line), line
    return line


def test_a_port_in_use_is_a_located_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = located(check(site(tmp_path, port)), "status.port")
    assert f"expected a free port; found {port} on 127.0.0.1 already in use" in line
    assert "choose another status.port" in line


def test_a_listen_address_that_is_no_address_or_not_this_machines_is_a_located_error(tmp_path: Path) -> None:
    line = located(check(site(tmp_path / "a", free_port(), host="status.example")), "status.host")
    assert "expected an IP address of this machine" in line and "found 'status.example'" in line
    # 192.0.2.1 (TEST-NET-1, documentation only) is on no interface here: binding it fails, nothing is sent.
    line = located(check(site(tmp_path / "b", free_port(), host="192.0.2.1")), "status.host")
    assert "found '192.0.2.1', which no interface has" in line and "127.0.0.1 for this box only" in line


def test_a_missing_password_file_is_a_located_error_and_so_is_no_password_at_all(tmp_path: Path) -> None:
    config = site(tmp_path / "a", free_port(), auth={"username": "engineer", "password_file": "status-password"})
    line = located(check(config), "status.auth.password_file")
    assert "expected a readable file holding the password; found no such file or directory" in line
    assert "create it" in line
    config = site(tmp_path / "b", free_port(), auth={"username": "engineer"})
    assert "give password (as ${ENV_VAR}) or password_file" in located(check(config), "status.auth")


def test_a_valid_listener_passes(tmp_path: Path) -> None:
    secret = tmp_path / "status-password"
    secret.write_text("pass\n")
    result = check(site(tmp_path, free_port(), auth={"username": "engineer", "password_file": str(secret)}))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_a_listener_without_aiohttp_installed_is_a_located_error_naming_the_extra(tmp_path: Path) -> None:
    line = located(check(site(tmp_path, free_port()), prelude="sys.modules['aiohttp'] = None"), "status.enabled")
    assert "needs aiohttp, which is not installed" in line and "municipal-gateway[status]" in line
