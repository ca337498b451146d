"""Benchmark: D simulated Modbus TCP devices x R registers -> the gateway -> mosquitto -> a subscriber.

    .venv/bin/python bench/modbus_mqtt_bench.py --devices 100 --registers 100 --interval 1 --seconds 30

The gateway runs as its own process (`municipal-gateway run`) with the settings a user gets by default
(only the broker's address and the state directory are set); the simulators run in another process, so
CPU and memory are the gateway's alone. Every register changes on every poll and the bench's catalogue
has no reporting rules, so every reading is forwarded. Everything listens on 127.0.0.1.

Printed: readings/s offered and delivered (counted at the subscriber), sequence numbers missing or seen
twice, median and 95th-percentile latency from poll to subscriber, the gateway's CPU (share of one core
and CPU-s per 1,000 readings), peak RSS, Modbus requests per device poll, start-up time to the first
reading delivered, what the validated configuration costs per point, and the machine's load average
(a noisy run shows in it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import yaml
from paho.mqtt.enums import CallbackAPIVersion

BASE_PORT = 21000


def serve(devices: int, registers: int, interval: float, base_port: int) -> None:
    """The simulator process: one pymodbus server per device, every register changing once per poll interval."""
    from drivers.modbus.tables import Table
    from simulators.modbus import ModbusSimulator

    async def main() -> None:
        servers = [ModbusSimulator([1], port=base_port + i, size=max(registers, 16)) for i in range(devices)]
        for server in servers:
            await server.start()
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        tick = 0
        while not stop.is_set():
            for index, server in enumerate(servers):
                server.set_registers(1, Table.HOLDING_REGISTER, 0,
                                     [(tick + index + r) % 1000 for r in range(registers)])
            tick += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval / 2)  # twice per poll: every poll sees new values
        print(json.dumps({"requests": sum(sum(s.requests.values()) for s in servers)}), flush=True)
        for server in servers:
            await server.stop()

    asyncio.run(main())


def write_site(directory: Path, devices: int, registers: int, interval: float, broker_port: int,
               base_port: int, *, extra_point: dict[str, object] | None = None,
               settings: dict[str, object] | None = None) -> Path:
    """The bench's site: `registers` polled points per device (one indicator each), plus `extra_point` (given its
    own indicator) on every device; `settings` go into the main file beside the broker and the state directory."""
    count = registers + (extra_point is not None)
    indicators = [{"id": f"bench-{r:03d}", "name": {"en": f"Bench {r}", "zh": f"测试{r}"}, "kind": "measurement",
                   "unit": "kPa", "range": [0, 100000], "quantified": "instantaneous"} for r in range(count)]
    catalogue = {"domains": [{"id": "water-supply", "name": {"en": "Water supply", "zh": "供水"}}],
                 "asset_types": [{"id": "bench-station", "domain": "water-supply",
                                  "name": {"en": "Bench station", "zh": "测试站"}}],
                 "indicators": indicators}
    points = [{"name": f"r{r}", "indicator": f"bench-{r:03d}", "table": "holding_register", "address": r,
               "type": "uint16", "scale": 0.1} for r in range(registers)]
    if extra_point is not None:
        points.append({**extra_point, "indicator": f"bench-{registers:03d}"})
    (directory / "devices").mkdir()
    for i in range(devices):  # one file per device, as a site is usually laid out
        device = {"id": f"dev-{i:03d}", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": base_port + i,
                  "poll_interval": interval,
                  "asset": {"domain": "water-supply", "site": "bench", "id": f"asset-{i:03d}", "type": "bench-station"},
                  "points": points}
        (directory / "devices" / f"dev-{i:03d}.yaml").write_text(yaml.safe_dump({"devices": [device]}))
    main = {"gateway": {"id": "bench-gw", "state_dir": str(directory / "state"), "log_level": "warning"},
            "mqtt": {"host": "127.0.0.1", "port": broker_port}, **(settings or {}),
            "catalogue": "catalogue.yaml", "include": ["devices/*.yaml"]}
    (directory / "catalogue.yaml").write_text(yaml.safe_dump(catalogue, allow_unicode=True))
    (directory / "gateway.yaml").write_text(yaml.safe_dump(main))
    return directory / "gateway.yaml"


class Counter:
    """A subscriber counting readings, their latency (receive time minus source time) and their sequence numbers."""

    def __init__(self, port: int) -> None:
        self.readings = 0
        self.latencies: list[int] = []
        self.seqs: set[int] = set()
        self.repeated = 0
        self.first_at: float | None = None
        self.window_open = False
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter")
        # The gateway's own alarm events (its clock not synchronised, say) take seq numbers too.
        self.client.on_connect = lambda c, *_: c.subscribe([("city/+/+/+/data", 1), ("city/gateway/+/alarm", 1)])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        now = time.time_ns() // 1_000_000
        body = json.loads(message.payload)
        if "events" in body:
            with self.lock:
                self.seqs.update(event["seq"] for event in body["events"])
            return
        readings = body["readings"]
        with self.lock:
            if self.first_at is None:
                self.first_at = time.monotonic()
            for reading in readings:
                if reading["seq"] in self.seqs:
                    self.repeated += 1
                self.seqs.add(reading["seq"])
            if self.window_open:
                self.readings += len(readings)
                self.latencies.append(now - readings[0]["ts"])

    def open_window(self) -> None:
        with self.lock:
            self.window_open, self.readings, self.latencies = True, 0, []

    def close_window(self) -> tuple[int, list[int]]:
        with self.lock:
            self.window_open = False
            return self.readings, list(self.latencies)

    def missing(self, last_seq: int) -> int:
        """Sequence numbers from 1 to `last_seq` that never arrived."""
        with self.lock:
            return last_seq - len({s for s in self.seqs if s <= last_seq})

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """VmHWM: the peak resident set size; VmRSS: the current one."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def config_cost(config: Path) -> dict[str, float]:
    """Bytes per configured point that loading and resolving the configuration adds (in a fresh process)."""
    script = (
        "import gc, resource, sys\n"
        "def rss():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS:')).split()[1])\n"
        "import drivers, gateway.app, drivers.modbus.tcp\n"
        "from gateway.config.loader import load_config\n"
        "from pathlib import Path\n"
        "gc.collect(); before = rss()\n"
        "config = load_config(Path(sys.argv[1]))\n"
        "gc.collect(); after = rss()\n"
        "print(after - before, sum(len(d.points) for d in config.devices))\n")
    out = subprocess.run([sys.executable, "-c", script, str(config)], capture_output=True, text=True, check=True)
    kib, points = (int(x) for x in out.stdout.split())
    return {"config_bytes_per_point": kib * 1024 / points, "points": points}


def run(devices: int, registers: int, interval: float, seconds: float, warmup: float) -> dict[str, float]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        directory = Path(tmp)
        broker_port = BASE_PORT - 1
        (directory / "mosquitto.conf").write_text(
            f"user {getpass.getuser()}\nlistener {broker_port} 127.0.0.1\nallow_anonymous true\n"
            "max_queued_messages 100000\nlog_dest none\n")
        broker = subprocess.Popen([mosquitto, "-c", str(directory / "mosquitto.conf")], stderr=subprocess.DEVNULL)
        simulators = subprocess.Popen([sys.executable, __file__, "--serve", "--devices", str(devices),
                                       "--registers", str(registers), "--interval", str(interval)],
                                      stdout=subprocess.PIPE, text=True)
        assert simulators.stdout is not None
        assert simulators.stdout.readline().strip() == "ready"
        config = write_site(directory, devices, registers, interval, broker_port, BASE_PORT)
        cost = config_cost(config)
        time.sleep(0.3)  # let mosquitto bind before the subscriber connects
        counter = Counter(broker_port)
        spawned = time.monotonic()
        gateway = subprocess.Popen([sys.executable, "-m", "gateway", "run", str(config)])
        process = psutil.Process(gateway.pid)
        time.sleep(warmup)
        cpu_before = sum(process.cpu_times()[:2])
        counter.open_window()
        started = time.monotonic()
        time.sleep(seconds)
        cpu = sum(process.cpu_times()[:2]) - cpu_before
        elapsed = time.monotonic() - started
        delivered, latencies = counter.close_window()
        rss, rss_now = rss_mb(gateway.pid), rss_mb(gateway.pid, "VmRSS")
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=60)
        time.sleep(1.0)  # the last PUBACKed messages reach the subscriber
        simulators.send_signal(signal.SIGTERM)
        requests = json.loads(simulators.stdout.readline())["requests"]
        simulators.wait(timeout=30)
        from gateway.buffer import read_stats

        stats = read_stats(directory / "state" / "buffer.sqlite")
        missing = counter.missing(stats.last_seq)
        counter.stop()
        broker.terminate()
        broker.wait(timeout=10)
    offered = devices * registers / interval
    latencies.sort()
    return {
        "offered_readings_per_s": offered,
        "delivered_readings_per_s": delivered / elapsed,
        "delivered_share": delivered / elapsed / offered,
        "seq_missing_at_the_subscriber": missing - stats.readings,  # those still buffered are not lost
        "seq_still_buffered_at_exit": stats.readings,
        "seq_dropped_by_the_buffer": stats.dropped_readings,
        "seq_delivered_twice": counter.repeated,
        "latency_median_ms": statistics.median(latencies) if latencies else float("nan"),
        "latency_p95_ms": latencies[int(len(latencies) * 0.95)] if latencies else float("nan"),
        "cpu_share_of_one_core": cpu / elapsed,
        "cpu_seconds_per_1000_readings": cpu / (delivered / 1000) if delivered else float("nan"),
        "peak_rss_mb": rss,
        "rss_at_end_mb": rss_now,
        "config_bytes_per_point": cost["config_bytes_per_point"],
        # Every poll committed R readings (the sequence counts them); the simulators count the requests.
        "modbus_requests_per_device_poll": requests / (stats.last_seq / registers),
        "startup_to_first_reading_s": (counter.first_at or float("nan")) - spawned,
        "load_average_1min": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, seconds")
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.devices, args.registers, args.interval, BASE_PORT)
        return
    result = run(args.devices, args.registers, args.interval, args.seconds, args.warmup)
    print(f"{args.devices} devices x {args.registers} registers every {args.interval:g} s "
          f"({os.cpu_count()} cores, {args.seconds:g} s window, default settings)")
    for key, value in result.items():
        print(f"  {key:<34} {value:12.3f}")


if __name__ == "__main__":
    main()
