"""Benchmark: the command round trip, publish -> result, while 10 devices are polled.

    .venv/bin/python bench/command_bench.py --devices 10 --commands 200

mosquitto, the simulated Modbus TCP devices (pymodbus, in their own process) and the gateway (`municipal-gateway
run`, its own process) listen on 127.0.0.1, ports 24000 and up only. Every device has 10 holding registers polled
every second and one writable setpoint. The operator, an MQTT 5 client, sends one command at a time to a
device in turn (a setpoint within its range, a fresh id) and waits for its result: the time from handing the
PUBLISH to paho to the result's arrival is the round trip, and includes the audit log's disk syncs (of the
command before the write, of the result before it is sent), the Modbus write and its read-back. The
gateway's command connection sets TCP_NODELAY; mosquitto gets `set_tcp_nodelay true` and the operator
TCP_NODELAY too, unless --broker-nagle / --nagle (then each hop whose sender has an unacknowledged packet in
flight waits for the peer's delayed ACK, 40 ms on Linux).
Printed: p50, p95 and max of the round trip, results that were not `done`/`confirmed`, and the readings
delivered meanwhile (polling goes on).
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
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).parent))
import modbus_mqtt_bench

BROKER_PORT = 24000
BASE_PORT = 24001  # the devices: 24001 .. 24000 + devices
REGISTERS = 10


def serve(devices: int) -> None:
    """The simulator process: one pymodbus server per device."""
    from drivers.modbus.tables import Table
    from simulators.modbus import ModbusSimulator

    async def main() -> None:
        servers = [ModbusSimulator([1], port=BASE_PORT + i, size=64) for i in range(devices)]
        for server in servers:
            await server.start()
            server.set_registers(1, Table.HOLDING_REGISTER, 0, [400 + r for r in range(REGISTERS)])
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        for server in servers:
            await server.stop()

    asyncio.run(main())


def write_site(directory: Path, devices: int) -> Path:
    setpoint = {"name": "setpoint", "table": "holding_register", "address": 20, "type": "uint16", "scale": 0.1,
                "writable": True, "write": {"range": [0, 1000], "step": 0.1, "min_interval": 0}}
    return modbus_mqtt_bench.write_site(directory, devices, REGISTERS, 1.0, BROKER_PORT, BASE_PORT,
                                        extra_point=setpoint, settings={
                                            "clock": {"source": "none"},
                                            "commands": {"rate": {"per_point": 100, "per_gateway": 1000}}})


class Operator:
    """Sends commands and timestamps their results (paho's thread; guarded by a lock)."""

    def __init__(self, no_delay: bool) -> None:
        self._no_delay = no_delay
        self._lock = threading.Condition()
        self.results: dict[str, tuple[float, dict[str, object]]] = {}
        self.readings = 0
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-operator", protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", BROKER_PORT)
        if self._no_delay:  # as a control-room client should: a command is sent at once, not after an ACK
            sock = self._client.socket()
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client.subscribe([("city/gateway/bench-gw/cmd/result", 1), ("city/water-supply/bench/+/data", 1)])
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        arrived = time.perf_counter()
        body = json.loads(message.payload)
        with self._lock:
            if message.topic.endswith("/data"):
                self.readings += len(body["readings"])
            else:
                self.results.setdefault(str(body.get("id")), (arrived, body))
            self._lock.notify_all()

    def send(self, body: dict[str, object]) -> float:
        sent = time.perf_counter()
        self._client.publish("city/gateway/bench-gw/cmd", json.dumps(body), qos=1)
        return sent

    def wait(self, command_id: str, timeout: float) -> tuple[float, dict[str, object]] | None:
        with self._lock:
            self._lock.wait_for(lambda: command_id in self.results, timeout)
            return self.results.get(command_id)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def run(devices: int, commands: int, warmup: float, no_delay: bool, broker_nagle: bool) -> dict[str, float]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        directory = Path(tmp)
        (directory / "mosquitto.conf").write_text(
            f"user {getpass.getuser()}\nlistener {BROKER_PORT} 127.0.0.1\nallow_anonymous true\nlog_dest none\n"
            + ("" if broker_nagle else "set_tcp_nodelay true\n"))
        broker = subprocess.Popen([mosquitto, "-c", str(directory / "mosquitto.conf")], stderr=subprocess.DEVNULL)
        simulators = subprocess.Popen([sys.executable, __file__, "--serve", "--devices", str(devices)],
                                      stdout=subprocess.PIPE, text=True)
        assert simulators.stdout is not None
        assert simulators.stdout.readline().strip() == "ready"
        config = write_site(directory, devices)
        time.sleep(0.3)  # let mosquitto bind before the operator connects
        operator = Operator(no_delay)
        gateway = subprocess.Popen([sys.executable, "-m", "gateway", "run", str(config)])
        time.sleep(warmup)  # connected, subscribed, every device polled
        trips: list[float] = []
        failed = 0
        readings_before = operator.readings
        started = time.monotonic()
        try:
            for n in range(commands):
                device = f"dev-{n % devices:03d}"
                body = {"id": f"bench-{n}", "device": device, "point": "setpoint", "value": round(10 + n % 900, 1),
                        "issued": time.time_ns() // 1_000_000}
                sent = operator.send(body)
                answer = operator.wait(str(body["id"]), 10.0)
                if answer is None:
                    failed += 1
                    continue
                arrived, result = answer
                trips.append((arrived - sent) * 1000)
                if result.get("status") != "done" or result.get("confirmation") != "confirmed":
                    failed += 1
        finally:
            elapsed = time.monotonic() - started
            readings = operator.readings - readings_before
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=60)
            operator.stop()
            simulators.send_signal(signal.SIGTERM)
            simulators.wait(timeout=30)
            broker.terminate()
            broker.wait(timeout=10)
    trips.sort()
    return {
        "commands": commands,
        "not_done_confirmed": failed,
        "round_trip_p50_ms": statistics.median(trips) if trips else float("nan"),
        "round_trip_p95_ms": trips[int(len(trips) * 0.95)] if trips else float("nan"),
        "round_trip_max_ms": trips[-1] if trips else float("nan"),
        "readings_delivered_per_s_meanwhile": readings / elapsed,
        "readings_offered_per_s": devices * (REGISTERS + 1) / 1.0,
        "load_average_1min": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--nagle", action="store_true",
                        help="leave Nagle's algorithm on in the operator's client (paho's default)")
    parser.add_argument("--broker-nagle", action="store_true",
                        help="leave mosquitto's set_tcp_nodelay at its default (false)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.devices)
        return
    with contextlib.suppress(KeyboardInterrupt):
        result = run(args.devices, args.commands, args.warmup, not args.nagle, args.broker_nagle)
        print(f"command round trip with {args.devices} devices polled every 1 s ({os.cpu_count()} cores, "
              f"operator client {'with Nagle' if args.nagle else 'TCP_NODELAY'}, mosquitto "
              f"{'default' if args.broker_nagle else 'set_tcp_nodelay true'})")
        for key, value in result.items():
            print(f"  {key:<36} {value:12.3f}")


if __name__ == "__main__":
    main()
