"""`municipal-gateway read DEVICE`: poll one device once and print a table (no buffer, no MQTT)."""

from __future__ import annotations

from gateway.app import make_driver
from gateway.config.loader import GatewayConfig
from gateway.mapping import DeviceMapper
from gateway.model.devices import DeviceBase
from gateway.model.driver import DriverError
from gateway.model.readings import Reading, now_ms


async def read_once(config: GatewayConfig, device: DeviceBase) -> int:
    driver = make_driver([device], config.state_dir)
    mapper = DeviceMapper(device, config.catalogue)
    try:
        await driver.connect()
        samples = await driver.read(device)
    except DriverError as exc:
        print(f"device {device.id} did not answer: {exc} ({exc.reason})")
        return 1
    finally:
        await driver.close()
    print(format_table(mapper.readings(samples, now_ms())))
    return 0


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
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)
