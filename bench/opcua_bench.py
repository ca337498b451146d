"""OPC-UA benchmark: subscription throughput, client cost, and recovery after a server restart.

    .venv/bin/python bench/opcua_bench.py [--seconds 20] [--outage 20] [--rounds 10]

Scenarios, each against simulated servers in their own processes on 127.0.0.1
(so the figures are the gateway side's only):
  1. one server, 1,000 monitored items, every value changing every second;
  2. ten servers x 100 items each (ten sessions, ten link tasks);
  3. a server killed, kept away for --outage seconds (long enough for any
     back-off to reach its cap) and restarted, --rounds times: time from the
     new server accepting connections to the first fresh reading, p50/p95/max.
Reported: readings/s delivered, CPU seconds per 1,000 readings, RSS of this process.
The driver runs under the real link runner (LinkRunner), as in the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.opcua.config import OpcUaDevice  # noqa: E402
from drivers.opcua.driver import OpcUaDriver  # noqa: E402
from gateway.links import DeviceStatus, LinkRunner  # noqa: E402
from gateway.model.devices import DeviceBase  # noqa: E402
from gateway.model.driver import LinkContext  # noqa: E402
from gateway.model.readings import Quality, Sample  # noqa: E402
from simulators.opcua import STATION_NAMESPACE  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """A simulator process with `extra` changing variables."""

    def __init__(self, port: int, extra: int) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simulators.opcua", "--port", str(port), "--extra", str(extra),
             "--period", "1"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)})

    async def ready(self) -> float:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), 60)
        if not line.startswith(b"ready"):
            raise RuntimeError(f"simulator on port {self.port} did not start: {line!r}")
        return time.monotonic()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def device(port: int, items: int, index: int = 0) -> OpcUaDevice:
    points = [{"name": f"v{i:04d}", "indicator": "inlet-pressure",
               "node": f"nsu={STATION_NAMESPACE};s=Bench.Value{i:04d}"} for i in range(items)]
    return OpcUaDevice.model_validate({
        "id": f"bench-{index}", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{port}/station",
        "asset": {"domain": "gas", "site": "bench", "id": f"bench-{index}", "type": "gas-regulating-station"},
        "publishing_interval": 1.0, "keepalive": 1.0, "points": points})


@dataclass
class Counter:
    good: int = 0
    bad: int = 0
    last_good_at: float = 0.0

    def on_samples(self, _device: DeviceBase, samples: Sequence[Sample], _rx: int) -> None:
        good = sum(1 for s in samples if s.quality is Quality.GOOD)
        self.good += good
        self.bad += len(samples) - good
        if good:
            self.last_good_at = time.monotonic()

    def on_failure(self, _device: DeviceBase, _reason: str, _rx: int) -> None:
        self.bad += 1


def runners(devices: list[OpcUaDevice], counter: Counter, state_dir: Path) -> list[LinkRunner[OpcUaDevice]]:
    def quiet(_status: DeviceStatus[Any]) -> None:
        return None

    context = LinkContext(state_dir=state_dir)
    return [LinkRunner(d.link_id(), OpcUaDriver([d], context), counter.on_samples, counter.on_failure, quiet)
            for d in devices]


async def throughput(name: str, servers: int, items: int, seconds: float, state_dir: Path) -> None:
    processes = [Server(free_port(), items) for _ in range(servers)]
    try:
        await asyncio.gather(*(p.ready() for p in processes))
        counter = Counter()
        tasks = [asyncio.create_task(p.run()) for p in runners(
            [device(p.port, items, i) for i, p in enumerate(processes)], counter, state_dir)]
        await asyncio.sleep(3)  # warm-up: sessions, subscriptions, initial values
        me = psutil.Process()
        cpu0, good0, t0 = me.cpu_times(), counter.good, time.monotonic()
        await asyncio.sleep(seconds)  # measuring over a fixed window
        cpu1, good1, t1 = me.cpu_times(), counter.good, time.monotonic()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        delivered = good1 - good0
        cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        expected = servers * items / 1.0
        print(f"{name}: {delivered / (t1 - t0):,.0f} readings/s delivered (server changes {expected:,.0f}/s), "
              f"{cpu / max(delivered, 1) * 1000 * 1000:.1f} ms CPU per 1,000 readings "
              f"({cpu / (t1 - t0) * 100:.1f} % of one core), RSS {me.memory_info().rss / 2**20:.0f} MiB, "
              f"bad readings {counter.bad}")
    finally:
        for process in processes:
            process.stop()


async def restart(state_dir: Path, outage: float, rounds: int) -> None:
    port = free_port()
    server = Server(port, 100)
    await server.ready()
    counter = Counter()
    (poller,) = runners([device(port, 100)], counter, state_dir)
    task = asyncio.create_task(poller.run())
    times = []
    try:
        for _ in range(rounds):
            await _until(lambda: counter.good > 0, 30)
            server.stop()
            await asyncio.sleep(outage)  # the server stays away
            server = Server(port, 100)
            back = await server.ready()
            await _until(lambda back=back: counter.last_good_at > back, 60)
            times.append(counter.last_good_at - back)
        times.sort()
        p95 = times[min(len(times) - 1, math.ceil(len(times) * 0.95) - 1)]
        print(f"restart after {outage:g} s away, {rounds} rounds: first fresh reading p50 "
              f"{statistics.median(times):.2f} s, p95 {p95:.2f} s, max {times[-1]:.2f} s after the new server was "
              f"ready; bad readings during the gaps: {counter.bad}")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.stop()


async def _until(condition: Any, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window per scenario")
    parser.add_argument("--outage", type=float, default=20.0, help="seconds a restarted server stays away")
    parser.add_argument("--rounds", type=int, default=10, help="server restarts")
    args = parser.parse_args()
    state_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "opcua-bench-state"
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, window {args.seconds:g} s")
    await throughput("1 server x 1,000 items", 1, 1000, args.seconds, state_dir)
    await throughput("10 servers x 100 items", 10, 100, args.seconds, state_dir)
    await restart(state_dir, args.outage, args.rounds)


if __name__ == "__main__":
    # Figures only: the expected disconnects of the restart scenario are reported by the driver already.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    logging.getLogger("gateway.links").setLevel(logging.ERROR)
    asyncio.run(main())
