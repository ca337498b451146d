"""What report by exception saves, and what processing costs.

A realistic water pumping station, polled every 5 s for one simulated hour:
slowly drifting pressures, flow and level with sensor noise, water quality that
barely moves, three pumps whose run states change a few times an hour, a door
and a mains monitor that never change, and energy totalisers that only grow.

Prints messages and bytes per hour (MQTT payload + topic) with every reading
published and with report by exception, and the CPU time processing takes per
1,000 readings. Run: .venv/bin/python bench/processing_bench.py
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from gateway.config.loader import load_catalogue
from gateway.mapping import DeviceMapper
from gateway.model.catalogue import Catalogue
from gateway.model.devices import DeviceBase
from gateway.model.readings import Sample
from gateway.model.resolved import assets_of, resolve_device
from gateway.payload import encode_alarm_events, encode_batch, encode_statistics
from gateway.processing import Output, Processor
from gateway.topics import Topics

CATALOGUE = Path(__file__).parent.parent / "config" / "catalogue.yaml"
POLL_S = 5
HOUR_S = 3_600
START_MS = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000
TOPICS = Topics("city", "gw-bench")

# name: (indicator, start value, drift per poll, noise, report-by-exception rule)
ANALOG: dict[str, tuple[str, float, float, float, dict[str, Any]]] = {
    "p_suction": ("suction-pressure", 150.0, 0.05, 0.3, {"deadband": 2}),
    "p_discharge": ("discharge-pressure", 420.0, 0.08, 0.5, {"deadband": 2}),
    "flow": ("flow", 850.0, 0.5, 4.0, {"deadband_percent": 2, "deadband": 0.5}),
    "level": ("level", 3.2, 0.001, 0.005, {"deadband": 0.02}),
    "turbidity": ("turbidity", 0.3, 0.0, 0.01, {"deadband": 0.05}),
    "chlorine": ("free-chlorine", 0.6, 0.0, 0.01, {"deadband": 0.05}),
    "ph": ("ph", 7.4, 0.0, 0.01, {"deadband": 0.05}),
}
PUMP_ANALOG: dict[str, tuple[str, float, float, float, dict[str, Any]]] = {
    "hz": ("vfd-frequency", 45.0, 0.02, 0.1, {"deadband": 0.5}),
    "current": ("motor-current", 60.0, 0.03, 0.6, {"deadband_percent": 2}),
    "power": ("motor-power", 30.0, 0.02, 0.3, {"deadband_percent": 2}),
    "temp": ("motor-temperature", 55.0, 0.01, 0.2, {"deadband": 1}),
}


def station_devices(with_rbe: bool, bare: bool = False) -> list[DeviceBase]:
    """The station's devices; `bare`: no processing rules at all (not even the catalogue's)."""
    def point(name: str, indicator: str, reporting: dict[str, Any] | None) -> dict[str, Any]:
        rules: dict[str, Any] = {"reporting": ({**reporting, "max_silence": 900} if with_rbe and reporting is not None
                                               else None)}
        if bare:
            rules.update(windows=None, alarms=None)
        return {"name": name, "indicator": indicator, "processing": rules}

    def device(id_: str, asset: str, type_: str, points: list[dict[str, Any]]) -> DeviceBase:
        return DeviceBase.model_validate({
            "id": id_, "protocol": "bench", "poll_interval": POLL_S, "points": points,
            "asset": {"domain": "water-supply", "site": "north", "id": asset, "type": type_}})

    station_points = [point(n, i, r) for n, (i, *_, r) in ANALOG.items()]
    station_points += [point("door", "door-open", {}), point("mains", "mains-failure", {}),
                       point("volume", "volume", {"deadband": 1})]
    devices = [device("station-plc", "station", "water-pumping-station", station_points)]
    for pump in (1, 2, 3):
        points = [point(n, i, r) for n, (i, *_, r) in PUMP_ANALOG.items()]
        points += [point("run", "pump-running", {}), point("fault", "pump-fault", {}),
                   point("energy", "motor-energy", {"deadband": 1})]
        devices.append(device(f"pump-{pump}-vfd", f"pump-{pump}", "pump", points))
    return devices


class Field:
    """The simulated process: the same random sequence for every run."""

    def __init__(self, seed: int = 7) -> None:
        self.random = random.Random(seed)
        self.values: dict[tuple[str, str], float] = {}
        self.running = {1: True, 2: True, 3: False}
        self.totals: dict[str, float] = {}

    def samples(self, device: DeviceBase) -> list[Sample]:
        pump = int(device.id.split("-")[1]) if device.id.startswith("pump") else None
        table = PUMP_ANALOG if pump else ANALOG
        if pump and self.random.random() < 1 / 240:  # a start or stop about every 20 min per pump
            self.running[pump] = not self.running[pump]
        result = []
        for name, (_, start, drift, noise, _) in table.items():
            key = (device.id, name)
            trend = self.values.get(key, start) + self.random.uniform(-drift, drift)
            self.values[key] = trend
            value = trend + self.random.gauss(0, noise) if not pump or self.running[pump] else 0.0
            result.append(Sample(name, round(value, 3)))
        total_name = "energy" if pump else "volume"
        self.totals[device.id] = self.totals.get(device.id, 1000.0) + (0.04 if not pump or self.running[pump] else 0)
        result.append(Sample(total_name, round(self.totals[device.id], 2)))
        if pump:
            result += [Sample("run", self.running[pump]), Sample("fault", False)]
        else:
            result += [Sample("door", False), Sample("mains", False)]
        return result


def encoded(output: Output) -> list[tuple[str, bytes]]:
    """The messages the pipeline would buffer for one output: (topic, body)."""
    messages = []
    by_asset: dict[Any, list[Any]] = {}
    for r in output.readings:
        by_asset.setdefault(r.asset, []).append(r)
    for asset, readings in by_asset.items():
        messages.append((TOPICS.data(asset), encode_batch("gw-bench", asset, readings, 1)))
    for asset, stats in output.statistics:
        messages.append((TOPICS.stats(asset), encode_statistics("gw-bench", asset, [stats], 1)))
    for event in output.events:
        messages.append((TOPICS.alarm(event.asset), encode_alarm_events("gw-bench", event.asset, [event], 1)))
    return messages


def simulate_hour(catalogue: Catalogue, with_rbe: bool) -> tuple[int, int, int]:
    """(messages, bytes, readings) for one hour of polling."""
    clock = _Clock()
    devices = station_devices(with_rbe)
    resolved = [resolve_device(d, catalogue) for d in devices]
    processor = Processor(assets_of(resolved, catalogue), clock=clock)
    mappers = {d.id: DeviceMapper(d) for d in resolved}
    field = Field()
    messages = size = readings = 0
    for poll in range(HOUR_S // POLL_S):
        clock.now = START_MS + poll * POLL_S * 1000
        for device in devices:
            mapped = mappers[device.id].readings(field.samples(device), clock.now)
            readings += len(mapped)
            for topic, body in encoded(processor.process(device.id, mapped)):
                messages += 1
                size += len(topic) + len(body)
        if poll % (1000 // POLL_S or 1) == 0:
            for topic, body in encoded(processor.tick()):
                messages += 1
                size += len(topic) + len(body)
    return messages, size, readings


class _Clock:
    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now


def cpu_per_thousand(catalogue: Catalogue, with_rbe: bool, bare: bool = False, rounds: int = 4_000) -> float:
    """CPU milliseconds the processor spends per 1,000 readings (mapping excluded)."""
    clock = _Clock()
    devices = station_devices(with_rbe, bare)
    resolved = [resolve_device(d, catalogue) for d in devices]
    processor = Processor(assets_of(resolved, catalogue), clock=clock)
    mappers = {d.id: DeviceMapper(d) for d in resolved}
    field = Field()
    polls = []
    for round_ in range(rounds):
        clock.now = START_MS + round_ * POLL_S * 1000
        polls.append([(d.id, mappers[d.id].readings(field.samples(d), clock.now)) for d in devices])
    count = 0
    started = time.process_time()
    for round_ in range(rounds):
        clock.now = START_MS + round_ * POLL_S * 1000
        for device_id, mapped in polls[round_]:
            processor.process(device_id, mapped)
            count += len(mapped)
        if round_ % 200 == 0:
            processor.tick()
    return (time.process_time() - started) * 1000 / count * 1000


def main() -> None:
    catalogue = load_catalogue(CATALOGUE)
    plain = simulate_hour(catalogue, with_rbe=False)
    rbe = simulate_hour(catalogue, with_rbe=True)
    print(f"station: {len(station_devices(False))} devices, {plain[2] // (HOUR_S // POLL_S)} readings per poll, "
          f"polled every {POLL_S} s ({plain[2]:,} readings per hour)")
    print(f"{'':28} {'messages/h':>12} {'kB/h':>10}")
    for name, (messages, size, _) in (("every reading", plain), ("report by exception", rbe)):
        print(f"{name:28} {messages:>12,} {size / 1000:>10,.1f}")
    print(f"saved by report by exception: {1 - rbe[0] / plain[0]:.0%} of messages, "
          f"{1 - rbe[1] / plain[1]:.0%} of bytes")

    def measure(with_rbe: bool, bare: bool = False) -> float:
        return min(cpu_per_thousand(catalogue, with_rbe, bare) for _ in range(3))

    print("processing CPU per 1,000 readings (best of 3):")
    print(f"  report by exception + catalogue windows and alarms  {measure(True):6.2f} ms")
    print(f"  catalogue windows and alarms only                   {measure(False):6.2f} ms")
    print(f"  no rules (readings pass through)                    {measure(False, True):6.2f} ms")


if __name__ == "__main__":
    main()
