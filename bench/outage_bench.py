"""Benchmark: outages and the way back. How long after the broker (or a device) returns does fresh data
arrive, and how fast does the history that waited in the buffer drain?

    .venv/bin/python bench/outage_bench.py                      # 10 x 10 registers every 1 s, 20 s outages
    .venv/bin/python bench/outage_bench.py --devices 100 --registers 100 --repeats 5   # a 200,000-reading backlog

The gateway runs as its own process with the settings a user gets by default (only the broker's address and
the state directory are set), polling simulated Modbus TCP devices (their own process). A subscriber with a
persistent session (reconnecting by itself) records what arrives.

Broker outages: mosquitto is stopped for `--outage` seconds and started again on the same port, `--repeats`
times. Printed per outage and summarised (p50/p95/max):
- broker back -> delivering again: the first data message the subscriber receives after the broker was
  started again (the gateway has reconnected and sends what it holds);
- broker back -> first fresh reading: the first live (not historical) reading taken after the broker was
  started again; this includes the wait for the next poll, up to one poll interval;
- history drained: readings flagged historical per second, from the first of them to the last;
- whether every sequence number arrived.

Device outages: the simulated devices' process is killed for `--outage` seconds and started again,
`--device-repeats` times: device back -> first good reading, and -> a good reading from every device.
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).parent))
from modbus_mqtt_bench import BASE_PORT, write_site


@dataclass(slots=True)
class Arrival:
    at: float  # when the subscriber got it (wall clock, seconds)
    historical: bool
    seqs: list[int]
    rx_ms: list[int]
    good_devices: list[tuple[str, int]]  # (device, rx ms) of each good reading

    def good_since(self, moment: float) -> list[tuple[str, float]]:
        """(device, arrival time) for each good reading the gateway received after `moment`."""
        return [(device, self.at) for device, rx in self.good_devices if rx >= moment * 1000]


@dataclass
class Recorder:
    """A subscriber that reconnects by itself (paho's own loop) and keeps every data message with its time."""

    port: int
    arrivals: list[Arrival] = field(default_factory=list)
    event_seqs: set[int] = field(default_factory=set)  # the gateway's own alarm events take seq numbers too
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        # A persistent session: what the gateway sends before this subscriber is back waits in the broker.
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="outage-bench", clean_session=False)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = lambda c, *_: c.subscribe([("city/+/+/+/data", 1), ("city/gateway/+/alarm", 1)])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        if "events" in body:
            with self.lock:
                self.event_seqs.update(event["seq"] for event in body["events"])
            return
        readings = body["readings"]
        arrival = Arrival(time.time(), bool(body["historical"]), [r["seq"] for r in readings],
                          [r["rx"] for r in readings],
                          [(r["device"], r["rx"]) for r in readings if r["quality"] == "good"])
        with self.lock:
            self.arrivals.append(arrival)

    def since(self, moment: float) -> list[Arrival]:
        with self.lock:
            return [a for a in self.arrivals if a.at >= moment]

    def seqs(self) -> set[int]:
        with self.lock:
            return {s for a in self.arrivals for s in a.seqs} | self.event_seqs

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Broker:
    def __init__(self, directory: Path, port: int) -> None:
        self.port = port
        self.conf = directory / "mosquitto.conf"
        # Persistence keeps the subscriber's session (and what is queued for it) across the broker's restarts.
        self.conf.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
                             f"persistence true\npersistence_location {directory}/\n"
                             "max_queued_messages 1000000\nlog_dest none\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen([mosquitto, "-c", str(self.conf)], stderr=subprocess.DEVNULL)
        # Another broker already on the port would quietly take this one's place and no outage would happen.
        deadline = time.monotonic() + 10
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mosquitto could not listen on 127.0.0.1:{self.port} (is the port taken?)")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def one_outage(broker: Broker, recorder: Recorder, outage: float, settle: float) -> dict[str, float]:
    broker.stop()
    time.sleep(outage)  # the outage itself
    back = time.time()
    broker.start()
    fresh = None
    arrivals: list[Arrival] = []
    deadline = back + 120
    while time.time() < deadline:
        arrivals = recorder.since(back)
        fresh = next((a.at for a in arrivals if not a.historical and min(a.rx_ms) >= back * 1000), None)
        history = [a for a in arrivals if a.historical]
        quiet = not history or time.time() - history[-1].at > settle
        if fresh is not None and history and quiet:
            break
        time.sleep(0.05)  # watching from outside: polling the recorder is the measurement
    history = [a for a in recorder.since(back) if a.historical]
    drained = sum(len(a.seqs) for a in history)
    nan = float("nan")
    # The rate over the drain itself (the wait to reconnect is in "delivering again"); a backlog sent in
    # one burst shorter than the timer's resolution has no meaningful rate.
    span = history[-1].at - history[0].at if history else 0.0
    return {"delivering_after_s": (arrivals[0].at - back) if arrivals else nan,
            "fresh_after_s": (fresh - back) if fresh is not None else nan,
            "history_readings": drained, "history_readings_per_s": drained / span if span > 0.05 else nan}


class Devices:
    """The simulated devices' process (one Modbus TCP server per device)."""

    def __init__(self, devices: int, registers: int, interval: float) -> None:
        self.command = [sys.executable, str(Path(__file__).with_name("modbus_mqtt_bench.py")), "--serve",
                        "--devices", str(devices), "--registers", str(registers), "--interval", str(interval)]
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> float:
        """Start them; when they all listen (wall clock)."""
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"
        return time.time()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None


def one_device_outage(devices: Devices, recorder: Recorder, outage: float, count: int) -> dict[str, float]:
    devices.stop()
    time.sleep(outage)
    back = devices.start()
    deadline = back + 120
    first = every = None
    while time.time() < deadline and every is None:
        good: dict[str, float] = {}
        for arrival in recorder.since(back):
            for device, rx in arrival.good_since(back):
                good.setdefault(device, rx)
        if good:
            first = min(good.values())
        if len(good) == count:
            every = max(good.values())
        time.sleep(0.05)  # watching from outside: polling the recorder is the measurement
    nan = float("nan")
    return {"first_good_s": (first - back) if first is not None else nan,
            "every_good_s": (every - back) if every is not None else nan}


def _percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.95) - 1)]
    return f"p50 {statistics.median(ordered):.2f} s   p95 {p95:.2f} s   max {ordered[-1]:.2f} s"


def run(devices: int, registers: int, interval: float, outage: float, repeats: int, device_repeats: int,
        settle: float) -> None:
    with tempfile.TemporaryDirectory(prefix="outage-bench-") as tmp:
        directory = Path(tmp)
        broker_port = BASE_PORT - 1
        broker = Broker(directory, broker_port)
        if _listening(broker_port):
            raise SystemExit(f"127.0.0.1:{broker_port} is taken: stop whatever listens there first")
        broker.start()
        simulators = Devices(devices, registers, interval)
        simulators.start()
        config = write_site(directory, devices, registers, interval, broker_port, BASE_PORT)
        recorder = Recorder(broker_port)
        gateway = subprocess.Popen([sys.executable, "-m", "gateway", "run", str(config)])
        try:
            time.sleep(5)  # warm up: connected and polling
            broker_results = []
            for index in range(repeats):
                result = one_outage(broker, recorder, outage, settle)
                broker_results.append(result)
                print(f"  broker outage {index + 1}: delivering {result['delivering_after_s']:.2f} s and a fresh "
                      f"reading {result['fresh_after_s']:.2f} s after the broker was back; "
                      f"history {result['history_readings']:.0f} readings at "
                      f"{result['history_readings_per_s']:.0f}/s", flush=True)
                time.sleep(2)
            device_results = []
            for index in range(device_repeats):
                result = one_device_outage(simulators, recorder, outage, devices)
                device_results.append(result)
                print(f"  device outage {index + 1}: first good reading {result['first_good_s']:.2f} s, from every "
                      f"device {result['every_good_s']:.2f} s after the devices were back", flush=True)
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=60)
            time.sleep(1)  # the last acknowledged messages reach the subscriber
            simulators.stop()
            from gateway.buffer import read_stats

            stats = read_stats(directory / "state" / "buffer.sqlite")
            missing = stats.last_seq - stats.readings - len({s for s in recorder.seqs() if s <= stats.last_seq})
            recorder.stop()
            broker.stop()
    rates = [r["history_readings_per_s"] for r in broker_results if not math.isnan(r["history_readings_per_s"])]
    print(f"{devices} devices x {registers} registers every {interval:g} s, outages of {outage:g} s "
          f"({os.cpu_count()} cores, default settings)")
    if broker_results:
        print(f"  {repeats} broker outages: broker back ->")
        print(f"    delivering again      {_percentiles([r['delivering_after_s'] for r in broker_results])}")
        print(f"    first fresh reading   {_percentiles([r['fresh_after_s'] for r in broker_results])}")
        history = statistics.median(r["history_readings"] for r in broker_results)
        drain = f"p50 {statistics.median(rates):,.0f} readings/s" if rates else "each in one burst"
        print(f"    history drained       {drain} (p50 backlog {history:,.0f} readings)")
    if device_results:
        print(f"  {device_repeats} device outages: devices back ->")
        print(f"    first good reading    {_percentiles([r['first_good_s'] for r in device_results])}")
        print(f"    every device good     {_percentiles([r['every_good_s'] for r in device_results])}")
    print(f"  sequence numbers missing  {missing}")
    print(f"  load average (1 min)      {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--registers", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, seconds")
    parser.add_argument("--outage", type=float, default=20.0, help="seconds the broker (or the devices) are away")
    parser.add_argument("--repeats", type=int, default=20, help="broker outages")
    parser.add_argument("--device-repeats", type=int, default=5, help="device outages")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds without history that end a drain")
    args = parser.parse_args()
    run(args.devices, args.registers, args.interval, args.outage, args.repeats, args.device_repeats, args.settle)


if __name__ == "__main__":
    main()
