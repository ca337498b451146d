"""`municipal-gateway read DEVICE`: poll one device once and print a table (no buffer, no MQTT).

A device that pushes (an OPC-UA subscription, a sensor sending lines) is listened to
until its first batch arrives, as the gateway would receive it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from drivers.registry import make_driver
from gateway.config.loader import GatewayConfig
from gateway.mapping import DeviceMapper
from gateway.model.devices import DeviceBase
from gateway.model.driver import Driver, DriverError, Poller, Pusher
from gateway.model.readings import Reading, Sample, now_ms
from gateway.model.resolved import ResolvedDevice

# How many reply timeouts a pushing device gets to send its first values.
_PUSH_WAIT_FACTOR = 10


async def read_once(config: GatewayConfig, resolved: ResolvedDevice[DeviceBase]) -> int:
    device = resolved.config
    driver = make_driver([device], config.link_context)
    mapper = DeviceMapper(resolved)
    try:
        await driver.open()
        samples = await _first_batch(driver, device)
    except DriverError as exc:
        print(f"device {device.id} did not answer: {exc} ({exc.reason})")
        return 1
    finally:
        await driver.close()
    print(format_table(mapper.readings(samples, now_ms())))
    return 0


async def _first_batch(driver: Driver[Any], device: DeviceBase) -> Sequence[Sample]:
    if not device.pushes and isinstance(driver, Poller):
        return await driver.read(device)
    assert isinstance(driver, Pusher), "the registry pairs pushing devices with pushing drivers"
    arrived: asyncio.Future[Sequence[Sample]] = asyncio.get_running_loop().create_future()

    def sink(_: DeviceBase, samples: Sequence[Sample]) -> None:
        if not arrived.done():
            arrived.set_result(samples)

    listening = asyncio.create_task(driver.run(sink), name=f"read {device.id}")
    waiters: list[asyncio.Future[Any]] = [arrived, listening]
    try:
        done, _ = await asyncio.wait(waiters, timeout=device.timeout * _PUSH_WAIT_FACTOR,
                                     return_when=asyncio.FIRST_COMPLETED)
        if arrived in done:
            return arrived.result()
        if listening in done:
            listening.result()  # raises the DriverError that ended it
        raise DriverError(f"nothing arrived within {device.timeout * _PUSH_WAIT_FACTOR:g} s", "timeout")
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


def format_table(readings: list[Reading]) -> str:
    header = ("point", "indicator", "value", "unit", "quality")
    rows = [header] + [
        (r.point, r.indicator, _value(r.value), r.unit,
         r.quality.value + (f" ({r.reason})" if r.reason else "")) for r in readings
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _value(value: object) -> str:
    """Every digit the value carries: 26234.55 as 26234.55 and a totaliser of 2.025e7 as 20250000
    (15 significant digits: all a float holds, without the noise of its last binary digit)."""
    if isinstance(value, float):
        return f"{value:.15g}" if not value.is_integer() or abs(value) >= 1e15 else str(int(value))
    return "-" if value is None else str(value)
