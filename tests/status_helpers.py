"""Helpers for the status listener's tests: a site with the listener on, and a client following its live updates."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.app import Gateway
from tests.brokers import WAIT
from tests.e2e import modbus_device, write_config

LOW_PRESSURE = {"id": "low-outlet-pressure", "level": "low", "limit": 300, "hysteresis": 10, "severity": "major"}


def status_site(directory: Path, broker_port: int, plc_port: int, status_port: int, **status: Any) -> Path:
    """The test station (outlet pressure with a low-pressure alarm at 300 kPa, flow, pump running) on one PLC,
    with the status listener on 127.0.0.1:`status_port`; `status` adds or overrides listener settings."""
    device = modbus_device("plc-1", plc_port)
    for point in device["points"]:
        if point["name"] == "outlet_pressure":
            point["processing"] = {"reporting": None, "alarms": [LOW_PRESSURE]}
    path = write_config(directory, broker_port, [device])
    main = yaml.safe_load(path.read_text())
    main["status"] = {"enabled": True, "host": "127.0.0.1", "port": status_port, "refresh": 0.2, **status}
    # The machine's clock may or may not be synchronised: taken as right, so no clock alarm comes and goes.
    main["clock"] = {"source": "none"}
    path.write_text(yaml.safe_dump(main))
    return path


async def snapshots(session: aiohttp.ClientSession, base: str) -> AsyncIterator[dict[str, Any]]:
    """Every snapshot the listener's server-sent events carry, as it comes."""
    async with session.get(base + "api/events") as response:
        assert response.status == 200, response.status
        assert response.headers["Content-Type"].startswith("text/event-stream")
        event: list[str] = []
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line:
                event.append(line)
                continue
            data = [part[len("data: "):] for part in event if part.startswith("data: ")]
            event = []
            if data:
                yield json.loads("\n".join(data))


async def until(session: aiohttp.ClientSession, base: str, condition: Callable[[dict[str, Any]], bool],
                what: str) -> dict[str, Any]:
    """The first live snapshot for which `condition` holds (woken by each update, no polling)."""
    last: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(WAIT):
            async for snapshot in snapshots(session, base):
                last = snapshot
                if condition(snapshot):
                    return snapshot
    except TimeoutError:
        pass
    raise AssertionError(f"timed out waiting for {what}; last snapshot: {json.dumps(last)[:2000]}")


async def serving(gateway: Gateway) -> None:
    """Until the gateway's listener answers; a gateway that failed to start fails the test within WAIT."""
    assert gateway.status_listener is not None
    async with asyncio.timeout(WAIT):
        await gateway.status_listener.serving.wait()


def value_of(snapshot: dict[str, Any], indicator: str) -> Any:
    return next((v["value"] for v in snapshot["values"] if v["indicator"] == indicator), None)
