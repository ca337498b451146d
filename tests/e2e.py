"""Helpers for end-to-end tests: a small site configuration written to disk, and a gateway run in-process."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import yaml

from gateway.app import Gateway
from gateway.clock import ClockWatch
from gateway.config.loader import GatewayConfig, load_config
from tests.brokers import Received

CATALOGUE = Path(__file__).parent / "config_cases" / "common" / "catalogue.yaml"
ASSET = {"domain": "water-supply", "site": "ps01", "id": "ps01-station", "type": "water-pumping-station"}
DATA_TOPIC = "city/water-supply/ps01/ps01-station/data"


def station_points() -> list[dict[str, Any]]:
    """Outlet pressure in 0.01 bar (int16), flow in L/s (float32), pump running (coil)."""
    return [
        {"name": "outlet_pressure", "indicator": "outlet-pressure", "table": "holding_register", "address": 0,
         "type": "int16", "unit": "bar", "scale": 0.01},
        {"name": "flow", "indicator": "flow", "table": "input_register", "address": 10, "type": "float32",
         "unit": "L/s"},
        {"name": "pump_running", "indicator": "pump-running", "table": "coil", "address": 0},
    ]


def modbus_device(device_id: str, port: int, *, unit_id: int = 1, asset: dict[str, str] | None = None,
                  points: list[dict[str, Any]] | None = None, **settings: Any) -> dict[str, Any]:
    return {"id": device_id, "protocol": "modbus-tcp", "host": "127.0.0.1", "port": port, "unit_id": unit_id,
            "poll_interval": 0.2, "timeout": 1.0, "asset": asset or ASSET,
            "points": station_points() if points is None else points, **settings}


def write_config(directory: Path, broker_port: int, devices: Iterable[dict[str, Any]],
                 **mqtt: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "devices.yaml").write_text(yaml.safe_dump({"devices": list(devices)}))
    main = {
        "gateway": {"id": "test-gw", "state_dir": str(directory / "state")},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "reconnect": {"initial_delay": 0.1, "max_delay": 0.5},
                 **mqtt},
        "buffer": {"synchronous": "normal"},
        # The host's clock may or may not be synchronised (this machine's is not), and a test cannot change it:
        # tests of the clock give the gateway a ClockWatch whose answers they control.
        "clock": {"source": "none"},
        "catalogue": str(CATALOGUE),
        "include": ["devices.yaml"],
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(main))
    return path


@contextlib.asynccontextmanager
async def running(config: GatewayConfig | Path, clock: ClockWatch | None = None) -> AsyncIterator[Gateway]:
    """The gateway running in this event loop; stopped (cleanly, as on SIGTERM) on exit."""
    gateway = Gateway(load_config(config) if isinstance(config, Path) else config, clock)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        yield gateway
    finally:
        stop.set()
        await task


def readings(messages: Iterable[Received], topic: str = DATA_TOPIC) -> list[dict[str, Any]]:
    """Every reading in the data batches received on `topic`, in arrival order."""
    found: list[dict[str, Any]] = []
    for message in messages:
        if message.topic == topic:
            found.extend(json.loads(message.payload)["readings"])
    return found


def seqs(messages: Iterable[Received], topic: str = DATA_TOPIC) -> list[int]:
    return [r["seq"] for r in readings(messages, topic)]


def streams_in_order(messages: Iterable[Received], topic: str = DATA_TOPIC) -> bool:
    """True when, ignoring repeats (redeliveries), live readings arrive in seq order and so do historical ones.

    After an outage the gateway sends live readings first and the history that waited behind them: two
    streams, each in the order its readings were taken.
    """
    seen: set[int] = set()
    live: list[int] = []
    history: list[int] = []
    for message in messages:
        if message.topic != topic:
            continue
        body = json.loads(message.payload)
        stream = history if body["historical"] else live
        for reading in body["readings"]:
            if reading["seq"] not in seen:
                seen.add(reading["seq"])
                stream.append(reading["seq"])
    return live == sorted(live) and history == sorted(history)
