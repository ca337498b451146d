"""`municipal-gateway demo`: simulated stations, a broker, the gateway and a live view, in one command.

Everything runs on 127.0.0.1 with free ports and a throw-away state directory:
- the example stations of config/demo/ (a water pumping station PLC and a
  lighting-cabinet energy meter) as Modbus TCP simulators with moving values;
- mosquitto when installed, otherwise amqtt, an embedded Python broker;
- the gateway itself, with the demo configuration (ports and state directory overridden);
- a subscriber showing what an operator at the centre receives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import getpass
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from drivers.modbus.config import ModbusTcpDevice
from gateway.app import Gateway
from gateway.config.loader import GatewayConfig, load_config
from gateway.model import format_time_ms
from gateway.publisher import Watcher

DEMO_DIR = Path(__file__).resolve().parent.parent / "config" / "demo"


def run_demo(args: argparse.Namespace) -> int:
    if not (DEMO_DIR / "gateway.yaml").exists():
        print(f"error: the demo configuration is not at {DEMO_DIR} (run the demo from a source checkout)",
              file=sys.stderr)
        return 2
    view = PlainView() if args.plain or not sys.stdout.isatty() else LiveView()
    return asyncio.run(_demo(args.seconds, view, args.embedded_broker))


async def _demo(seconds: float | None, view: View, embedded_broker: bool) -> int:
    from drivers.modbus.fieldsim import FieldSimulator

    config = load_config(DEMO_DIR / "gateway.yaml")
    typical = yaml.safe_load((DEMO_DIR / "simulation.yaml").read_text())
    devices = [d for d in config.devices if isinstance(d, ModbusTcpDevice)]
    simulator = FieldSimulator(devices, config.catalogue, typical={k: tuple(v) for k, v in typical.items()},
                               free_ports=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="municipal-gateway-demo-") as state_dir:
        await simulator.start()
        async with _broker(Path(state_dir), embedded_broker) as (broker_port, broker_name):
            config = _demo_config(config, simulator.port_map, broker_port, Path(state_dir))
            watcher = Watcher("127.0.0.1", broker_port, f"{config.main.mqtt.topic_prefix}/#")
            await watcher.start()
            view.started(broker_name, broker_port, config)
            gateway_task = asyncio.create_task(Gateway(config).run(stop), name="gateway")
            mover = asyncio.create_task(_move_values(simulator), name="simulated values")
            viewer = asyncio.create_task(_show(watcher, view), name="view")
            if seconds is not None:
                loop.call_later(seconds, stop.set)
            await asyncio.wait([gateway_task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            await gateway_task
            for task in (mover, viewer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # The gateway's last word is its retained `offline` status: once seen, everything it sent is here.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await watcher.wait_for(f"{config.main.mqtt.topic_prefix}/gateway/{config.main.gateway.id}/status",
                                           b'"offline"')
            view.update(watcher.take())
            watcher.close()
        await simulator.stop()
    return view.finish()


def _demo_config(config: GatewayConfig, ports: dict[int, int], broker_port: int, state_dir: Path) -> GatewayConfig:
    devices = [d.model_copy(update={"port": ports[d.port]}) if isinstance(d, ModbusTcpDevice) else d
               for d in config.devices]
    main = config.main.model_copy(update={
        "mqtt": config.main.mqtt.model_copy(update={"port": broker_port}),
        "gateway": config.main.gateway.model_copy(update={"state_dir": state_dir}),
        "buffer": config.main.buffer.model_copy(update={"path": state_dir / "buffer.sqlite"}),
    })
    return dataclasses.replace(config, main=main, devices=devices)


async def _move_values(simulator: Any) -> None:
    started = time.monotonic()
    while True:
        simulator.move(time.monotonic() - started)
        await asyncio.sleep(0.5)


async def _show(watcher: Watcher, view: View) -> None:
    while True:
        await asyncio.sleep(1.0)
        view.update(watcher.take())


@contextlib.asynccontextmanager
async def _broker(workdir: Path, embedded: bool) -> AsyncIterator[tuple[int, str]]:
    """A broker on a free loopback port: mosquitto when installed (unless `embedded`), else amqtt."""
    port = _free_port()
    mosquitto = None if embedded else shutil.which("mosquitto", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if mosquitto:
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
                        "persistence false\nlog_dest none\n")
        process = await asyncio.create_subprocess_exec(mosquitto, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL,
                                                       stderr=asyncio.subprocess.DEVNULL)
        try:
            async with asyncio.timeout(10):
                await _wait_listening(port)
            yield port, "mosquitto"
        finally:
            process.terminate()
            await process.wait()
        return
    from amqtt.broker import Broker

    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                     "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
    await broker.start()
    try:
        yield port, "amqtt (embedded)"
    finally:
        await broker.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_listening(port: int) -> None:
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)  # the broker process is starting; nothing to await but its port
            continue
        writer.close()
        await writer.wait_closed()
        return


# -- what the subscriber shows ------------------------------------------------------------------------------

@dataclasses.dataclass
class _Latest:
    value: object
    unit: str
    quality: str
    seq: int
    ts: int


class View:
    def __init__(self) -> None:
        self.messages = 0
        self.readings = 0
        self.bad = 0
        self.historical = 0
        self.seqs: set[int] = set()
        self.latest: dict[tuple[str, str], _Latest] = {}
        self.status: dict[str, str] = {}
        self.started_at = time.monotonic()

    def started(self, broker: str, port: int, config: GatewayConfig) -> None:
        print(f"demo: broker {broker} on 127.0.0.1:{port}; {len(config.devices)} simulated devices; "
              f"gateway {config.main.gateway.id}. Subscribe with: mosquitto_sub -p {port} -t 'city/#' -v")

    def update(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            self.messages += 1
            body = json.loads(payload) if payload else {}
            if topic.endswith("/data"):
                self._data(topic, body)
            elif topic.endswith("/status"):
                self.status[topic] = str(body.get("state"))

    def _data(self, topic: str, body: dict[str, Any]) -> None:
        asset = topic.split("/")[-2]
        self.historical += bool(body.get("historical"))
        for reading in body["readings"]:
            self.readings += 1
            self.bad += reading["quality"] != "good"
            self.seqs.add(reading["seq"])
            self.latest[(asset, reading["indicator"])] = _Latest(
                reading["value"], reading["unit"], reading["quality"], reading["seq"], reading["ts"])

    def finish(self) -> int:
        complete = bool(self.seqs) and len(self.seqs) == max(self.seqs) - min(self.seqs) + 1
        print(f"\ndemo finished: {self.messages} messages, {self.readings} readings ({self.bad} not good); "
              f"sequence numbers {min(self.seqs, default=0)}..{max(self.seqs, default=0)} "
              f"{'complete' if complete else 'with gaps'}")
        return 0 if self.readings else 1


class PlainView(View):
    """One line per message: for logs, pipes and CI."""

    def update(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            body = json.loads(payload) if payload else {}
            if topic.endswith("/data"):
                readings = body["readings"]
                bad = sum(r["quality"] != "good" for r in readings)
                print(f"{topic}: {len(readings)} readings, seq {readings[0]['seq']}..{readings[-1]['seq']}"
                      + (f", {bad} not good" if bad else ""))
            else:
                print(f"{topic}: {payload[:100].decode(errors='replace')}")
        super().update(messages)


class LiveView(View):
    """A table of the latest value of every indicator, redrawn every second."""

    def update(self, messages: list[tuple[str, bytes]]) -> None:
        super().update(messages)
        lines = [
            f"municipal-gateway demo — {time.monotonic() - self.started_at:5.0f} s — {self.messages} messages, "
            f"{self.readings} readings ({self.bad} not good) — Ctrl-C to stop",
            *(f"  {topic.split('/', 1)[1]}: {state}" for topic, state in sorted(self.status.items())),
            "",
            f"  {'asset':<16} {'indicator':<24} {'value':>12} {'unit':<6} {'quality':<8} {'seq':>7}  time",
        ]
        room = max(5, shutil.get_terminal_size().lines - len(lines) - 2)
        rows = sorted(self.latest.items())
        if len(rows) > room:
            lines[0] += f" — showing {room} of {len(rows)} indicators"
        for (asset, indicator), latest in rows[:room]:
            value = f"{latest.value:.4g}" if isinstance(latest.value, float) else str(latest.value)
            lines.append(f"  {asset:<16} {indicator:<24} {value:>12} {latest.unit:<6} {latest.quality:<8} "
                         f"{latest.seq:>7}  {format_time_ms(latest.ts)[11:23]}")
        sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
        sys.stdout.flush()
