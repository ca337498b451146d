"""Command-line behaviour that is not covered with a running gateway elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from drivers.registry import protocols

CONFIG = Path(__file__).parent.parent / "config"


def run(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"import sys\n{prelude}\nfrom gateway.cli import main\nsys.exit(main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"MQTT_PASSWORD": "unused", "PATH": "/usr/bin:/bin"})


def test_a_protocol_whose_library_is_missing_is_named_with_the_fix() -> None:
    # As on a gateway installed without the OPC-UA extra: asyncua cannot be imported.
    result = run("read", str(CONFIG / "opcua-example" / "gateway.yaml"), "prs-1-plc",
                 prelude="sys.modules['asyncua'] = None")
    assert result.returncode == 1, result.stderr
    assert "protocol 'opcua' needs the Python package 'asyncua'" in result.stderr
    assert "pip install 'municipal-gateway[opcua]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_schema_describes_every_protocol() -> None:
    result = run("schema", "--kind", "devices")
    assert result.returncode == 0, result.stderr
    text = json.dumps(json.loads(result.stdout))
    registered = set(protocols())
    assert {"modbus-tcp", "opcua", "cjt188", "dlt645"} <= registered
    for protocol in registered:
        assert f'"const": "{protocol}"' in text, protocol


def test_plan_prints_the_merged_requests_of_each_device() -> None:
    result = run("plan", str(CONFIG / "gateway.yaml"))
    assert result.returncode == 0, result.stderr
    assert "device ps01-plc-station" in result.stdout
    assert "holding_register 0-10 (11 registers" in result.stdout
