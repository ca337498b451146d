"""`municipal-gateway demo`: simulated stations, a broker, the gateway and a live view, in one command.

Everything runs on 127.0.0.1 with free ports and a throw-away state directory:
- the example stations of config/demo/, simulated with moving values: a water pumping station PLC and a
  lighting-cabinet energy meter on Modbus TCP; a gas pressure-regulating station on OPC-UA, in its own
  process (simulators/opcua.py) so that its server never holds up the demo's event loop; and a
  district metering station's RS-485 bus (a Modbus RTU controller, a CJ/T 188 water meter and a DL/T 645
  electricity meter) on the far end of a pseudo-terminal, which the gateway opens as its serial port;
- mosquitto when installed, otherwise amqtt, an embedded Python broker;
- the gateway itself, with the demo configuration (ports, endpoint, serial port and state directory
  overridden, all in `_demo_config`);
- a subscriber showing what an operator at the centre receives.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import dataclasses
import functools
import getpass
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from drivers.cjt188.config import Cjt188Device, Cjt188Field
from drivers.dlt645.config import Dlt645Device
from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.rtu_config import ModbusRtuDevice
from drivers.opcua.config import OpcUaDevice
from drivers.serial.config import SerialDevice
from gateway.app import Gateway
from gateway.config.loader import GatewayConfig, load_config
from gateway.model.catalogue import IndicatorKind
from gateway.model.devices import DeviceBase
from gateway.model.readings import format_time_ms
from gateway.model.resolved import ResolvedDevice, ResolvedPoint
from simulators.mqtt import Watcher
from simulators.serial import Cjt188MeterSim, Dlt645MeterSim, SimulatedBus, Slave

if TYPE_CHECKING:
    from simulators.fieldsim import FieldSimulator  # imported when needed: it imports pymodbus

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "config" / "demo"
# Seconds a child process (broker, OPC-UA station) gets to start, and to stop before it is killed.
CHILD_START_LIMIT = 20.0
CHILD_STOP_LIMIT = 5.0
Band = tuple[float, float]


class DemoError(Exception):
    """A part of the demo could not start; the message says which and why."""


def run_demo(args: argparse.Namespace) -> int:
    if not (DEMO_DIR / "gateway.yaml").exists():
        print(f"error: the demo configuration is not at {DEMO_DIR} (run the demo from a source checkout)",
              file=sys.stderr)
        return 2
    view = PlainView() if args.plain or not sys.stdout.isatty() else LiveView()
    try:
        return asyncio.run(_demo(args.seconds, view, args.embedded_broker))
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _demo(seconds: float | None, view: View, embedded_broker: bool) -> int:
    config = load_config(DEMO_DIR / "gateway.yaml")
    typical = {key: (float(low), float(high))
               for key, (low, high) in yaml.safe_load((DEMO_DIR / "simulation.yaml").read_text()).items()}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="municipal-gateway-demo-") as workdir:
        state_dir = Path(workdir)
        # Leaving these blocks stops everything in reverse order: the gateway is already gone by then.
        async with _simulated_field(config, typical, state_dir) as field, \
                _broker(state_dir, embedded_broker) as (broker_port, broker_name):
            config = _demo_config(config, field, broker_port, state_dir, mqtt5=broker_name == "mosquitto")
            watcher = Watcher("127.0.0.1", broker_port, f"{config.main.mqtt.topic_prefix}/#")
            await watcher.start()
            view.started(broker_name, broker_port, config, field.left_out)
            gateway = Gateway(config)
            gateway_task = asyncio.create_task(gateway.run(stop), name="gateway")
            commander = asyncio.create_task(_send_a_command(gateway, watcher), name="demo command")
            mover = asyncio.create_task(_move_values(field), name="simulated values")
            viewer = asyncio.create_task(_show(watcher, view), name="view")
            if seconds is not None:
                loop.call_later(seconds, stop.set)
            await asyncio.wait([gateway_task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            await gateway_task
            for task in (mover, viewer, commander):
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
    return view.finish()


def _demo_config(config: GatewayConfig, field: SimulatedField, broker_port: int, state_dir: Path,
                 mqtt5: bool = True) -> GatewayConfig:
    """The demo configuration pointed at what runs now: every setting only known at run time is set here."""
    def simulated(device: DeviceBase) -> DeviceBase | None:
        if device.protocol in field.left_out:
            return None
        update: dict[str, object] = {}
        if isinstance(device, ModbusTcpDevice):
            update = {"port": field.modbus_ports[device.port]}
        elif isinstance(device, OpcUaDevice):
            update = {"endpoint": field.opcua_endpoint}
        elif isinstance(device, SerialDevice):
            update = {"port": str(field.serial_paths[device.port])}
        return device.model_copy(update=update)

    main = config.main.model_copy(update={
        "mqtt": config.main.mqtt.model_copy(update={"port": broker_port}),
        "gateway": config.main.gateway.model_copy(update={"state_dir": state_dir}),
        "buffer": config.main.buffer.model_copy(update={"path": state_dir / "buffer.sqlite"}),
        # The embedded broker speaks MQTT 3.1.1 only: commands then come without response topics.
        "commands": config.main.commands.model_copy(update={"mqtt_version": "5" if mqtt5 else "3.1.1"}),
    })
    return dataclasses.replace(config.with_devices(simulated), main=main)


async def _send_a_command(gateway: Gateway, watcher: Watcher) -> None:
    """As the control room would: once the gateway listens, set PS01's pressure setpoint (README, Commands)."""
    await watcher.wait_for(gateway.topics.gateway_status(), b'"online"')  # its parts are made by then
    assert gateway.command_channel is not None, "the demo configuration accepts commands"
    await gateway.command_channel.wait_subscribed()
    body = {"id": f"demo-{os.getpid()}-1", "device": "ps01-plc-station", "point": "pressure_setpoint",
            "value": 450, "issued": time.time_ns() // 1_000_000, "source": "demo"}
    watcher.publish(gateway.topics.command(), json.dumps(body).encode())


async def _move_values(field: SimulatedField) -> None:
    started = time.monotonic()
    while True:
        field.move(time.monotonic() - started)
        await asyncio.sleep(0.5)


async def _show(watcher: Watcher, view: View) -> None:
    while True:
        await asyncio.sleep(1.0)
        view.update(watcher.take())


# -- the simulated field ----------------------------------------------------------------------------------

@dataclasses.dataclass
class SimulatedField:
    """Where the demo's simulated devices can be reached, and how to move their values."""

    modbus_ports: dict[int, int]  # configured TCP port -> the port served
    serial_paths: dict[str, Path]  # configured serial port -> the pseudo-terminal standing in for it
    opcua_endpoint: str | None  # the simulated station's endpoint (all OPC-UA devices of the demo use it)
    move: Callable[[float], None]  # sets every value the demo itself simulates to `seconds` into the demo
    left_out: dict[str, str]  # protocol -> why its devices are not part of this run


@contextlib.asynccontextmanager
async def _simulated_field(config: GatewayConfig, typical: Mapping[str, Band],
                           workdir: Path) -> AsyncIterator[SimulatedField]:
    """Every device of the demo configuration, simulated, until the block is left."""
    from simulators.fieldsim import FieldSimulator

    modbus = FieldSimulator(config.devices, typical=typical, free_ports=True)
    buses = SerialBuses([d for d in config.devices if isinstance(d.config, SerialDevice)], modbus, typical, workdir)
    left_out: dict[str, str] = {}
    wants_opcua = any(isinstance(d.config, OpcUaDevice) for d in config.devices)
    if wants_opcua and importlib.util.find_spec("asyncua") is None:
        left_out["opcua"] = "asyncua is not installed (pip install 'municipal-gateway[opcua]')"
    async with contextlib.AsyncExitStack() as running:
        endpoint = None
        if wants_opcua and "opcua" not in left_out:
            endpoint = await running.enter_async_context(_opcua_station(workdir))
        await modbus.start()
        running.push_async_callback(modbus.stop)
        await buses.start()
        running.push_async_callback(buses.stop)

        def move(seconds: float) -> None:
            modbus.move(seconds)
            buses.move(seconds)

        yield SimulatedField(modbus.port_map, buses.paths, endpoint, move, left_out)


@contextlib.asynccontextmanager
async def _opcua_station(workdir: Path) -> AsyncIterator[str]:
    """The gas station's OPC-UA server in a process of its own; yields its endpoint once it accepts clients."""
    log_file = workdir / "opcua-station.log"
    with log_file.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "simulators.opcua", "--port", str(_free_port()), "--demo",
            # stdin: the station also stops when the demo dies and the pipe closes.
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
            process_group=0)  # Ctrl-C goes to the demo alone, which stops the station after the gateway
        try:
            assert process.stdout is not None
            try:
                async with asyncio.timeout(CHILD_START_LIMIT):
                    ready = await process.stdout.readline()
            except TimeoutError:
                ready = b""
            if not ready.startswith(b"ready "):
                raise DemoError("the simulated OPC-UA station did not start:\n"
                                + log_file.read_text(errors="replace")[-2000:])
            yield ready.split()[1].decode()
        finally:
            await _end(process)


class SerialBuses:
    """Each serial port of the configuration as a pseudo-terminal, with its devices simulated on the far end:
    Modbus RTU units from the Modbus field simulator, CJ/T 188 and DL/T 645 meters with moving readings."""

    def __init__(self, devices: Sequence[ResolvedDevice[DeviceBase]], modbus: FieldSimulator,
                 typical: Mapping[str, Band], workdir: Path) -> None:
        self._typical = typical
        self._random = random.Random(1)
        self._movers: list[Callable[[float], None]] = []  # each sets one reading to `seconds` into the demo
        on_port: dict[str, list[ResolvedDevice[DeviceBase]]] = collections.defaultdict(list)
        for device in devices:
            if isinstance(device.config, SerialDevice):
                on_port[device.config.port].append(device)
        self.paths = {port: workdir / f"ttyRS485-{index}" for index, port in enumerate(on_port)}
        self.buses: list[SimulatedBus] = []
        for port, these in on_port.items():
            slaves = [slave for device in these if (slave := self._meter(device)) is not None]
            if any(isinstance(device.config, ModbusRtuDevice) for device in these):
                slaves.append(modbus.rtu_slaves(port))
            first = these[0].config
            assert isinstance(first, SerialDevice)
            settings = first.serial  # the loader has checked that every device on a port agrees
            # Replies take as long as on a real line at the configured rate.
            self.buses.append(SimulatedBus(self.paths[port], slaves, baud=settings.baud,
                                           bits_per_char=round(settings.char_time * settings.baud)))

    def _meter(self, resolved: ResolvedDevice[DeviceBase]) -> Slave | None:
        device = resolved.config
        if isinstance(device, Dlt645Device):
            dlt645 = Dlt645MeterSim(device.address)
            for dlt_point, point in zip(device.points, resolved.points, strict=True):
                self._follow(device, point, functools.partial(dlt645.values.__setitem__, dlt_point.identifier))
            return dlt645
        if isinstance(device, Cjt188Device):
            cjt188 = Cjt188MeterSim(device.address, device.meter_type_code, device.data_id_order)

            # Volumes go in hundredths of m3 (the simulator's unit byte says m3); the status word stays at
            # "valve open, battery fine".
            def volume(value: float) -> None:
                cjt188.volume_hundredths = round(value * 100)

            def settlement_volume(value: float) -> None:
                cjt188.settlement_hundredths = round(value * 100)

            for cjt_point, point in zip(device.points, resolved.points, strict=True):
                if cjt_point.field is Cjt188Field.VOLUME:
                    self._follow(device, point, volume)
                elif cjt_point.field is Cjt188Field.SETTLEMENT_VOLUME:
                    self._follow(device, point, settlement_volume)
            return cjt188
        return None  # Modbus RTU units come from the Modbus field simulator

    def _follow(self, device: DeviceBase, point: ResolvedPoint, set_value: Callable[[float], None]) -> None:
        """Move `point` along its typical values, handing `set_value` the meter's own reading."""
        indicator, transform = point.indicator, point.transform
        band = (self._typical.get(f"{device.asset.id}/{indicator.id}") or self._typical.get(indicator.id)
                or (transform.low or 0.0, transform.high or 100.0))
        wander = _Wander(*band, counter=indicator.kind is IndicatorKind.COUNTER,
                         phase=self._random.uniform(0, 2 * math.pi))
        self._movers.append(lambda seconds: set_value(transform.invert(wander.at(seconds))))

    async def start(self) -> None:
        self.move(0.0)
        for bus in self.buses:
            await bus.start()

    async def stop(self) -> None:
        for bus in self.buses:
            await bus.stop()

    def move(self, seconds: float) -> None:
        for mover in self._movers:
            mover(seconds)


@dataclasses.dataclass
class _Wander:
    """A measurement along a slow wave between `low` and `high` (canonical unit); for a counter,
    a reading that starts at `low` and grows by about `high` per hour."""

    low: float
    high: float
    counter: bool
    phase: float

    def at(self, seconds: float) -> float:
        if self.counter:
            return self.low + self.high * seconds / 3600
        return self.low + (self.high - self.low) * (0.5 + 0.4 * math.sin(seconds / 30 + self.phase))


# -- child processes and the broker --------------------------------------------------------------------------

async def _end(process: asyncio.subprocess.Process) -> None:
    """Stop a child process (SIGTERM, then SIGKILL after CHILD_STOP_LIMIT) and wait for it."""
    with contextlib.suppress(ProcessLookupError):  # it has already exited
        process.terminate()
    try:
        async with asyncio.timeout(CHILD_STOP_LIMIT):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
    if process.stdin is not None:
        process.stdin.close()


@contextlib.asynccontextmanager
async def _broker(workdir: Path, embedded: bool) -> AsyncIterator[tuple[int, str]]:
    """A broker on a free loopback port: mosquitto when installed (unless `embedded`), else amqtt."""
    port = _free_port()
    mosquitto = None if embedded else shutil.which("mosquitto", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if mosquitto:
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
                        "persistence false\nlog_dest none\n")
        # Its own process group: Ctrl-C reaches the demo alone, which stops the broker after the gateway.
        process = await asyncio.create_subprocess_exec(mosquitto, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL,
                                                       stderr=asyncio.subprocess.DEVNULL, process_group=0,
                                                       preexec_fn=_die_with_parent)
        try:
            async with asyncio.timeout(CHILD_START_LIMIT):
                await _wait_listening(port)
            yield port, "mosquitto"
        finally:
            await _end(process)
        return
    from amqtt.broker import Broker

    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                     "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
    await broker.start()
    try:
        yield port, "amqtt (embedded)"
    finally:
        await broker.shutdown()


def _die_with_parent() -> None:
    """Run in the broker's process before exec: Linux stops it when the demo dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


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

def _numbered(topic: str, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The entries of a data, stats or alarm message (readings, windows or events), each of which took one
    sequence number, and their kind; ("", []) for other messages. Together they are everything the gateway
    numbered, so their numbers have no gaps."""
    if topic.endswith(("/data", "/stats", "/alarm")):
        for kind in ("readings", "windows", "events"):
            if kind in body:
                return kind, body[kind]
    if topic.endswith("/audit") and "seq" in body:
        return "audit", [body]
    return "", []


_KIND_NAMES = {"readings": "readings", "windows": "statistics", "events": "alarm events",
               "audit": "audit record"}


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
        self.numbered: collections.Counter[str] = collections.Counter()  # entries per kind (see _numbered)
        self.latest: dict[tuple[str, str], _Latest] = {}
        self.status: dict[str, str] = {}
        self.results: list[str] = []  # command results, newest last
        self.circuits: dict[str, str] = {}  # lighting circuit -> its mode and next switching
        self.started_at = time.monotonic()

    def started(self, broker: str, port: int, config: GatewayConfig, left_out: Mapping[str, str]) -> None:
        protocols = collections.Counter(d.config.protocol for d in config.devices)
        print(f"demo: broker {broker} on 127.0.0.1:{port}; {len(config.devices)} simulated devices "
              f"({', '.join(f'{n} {protocol}' for protocol, n in protocols.items())}); "
              f"gateway {config.main.gateway.id}. Subscribe with: mosquitto_sub -p {port} -t 'city/#' -v")
        for protocol, why in left_out.items():
            print(f"demo: the {protocol} devices are left out: {why}")

    def update(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            self.messages += 1
            body = json.loads(payload) if payload else {}
            kind, entries = _numbered(topic, body)
            self.numbered[kind] += len(entries)
            self.seqs.update(entry["seq"] for entry in entries)
            if topic.endswith("/data"):
                self._data(topic, body)
            elif topic.endswith("/status"):
                self.status[topic] = str(body.get("state"))
            elif topic.endswith("/cmd/result"):
                self.results.append(_result_line(body))
            elif "/lighting/" in topic:
                self.circuits[topic.rsplit("/", 1)[1]] = _circuit_line(body)

    def _data(self, topic: str, body: dict[str, Any]) -> None:
        asset = topic.split("/")[-2]
        self.historical += bool(body.get("historical"))
        for reading in body["readings"]:
            self.readings += 1
            self.bad += reading["quality"] != "good"
            self.latest[(asset, reading["indicator"])] = _Latest(
                reading["value"], reading["unit"], reading["quality"], reading["seq"], reading["ts"])

    def finish(self) -> int:
        complete = bool(self.seqs) and len(self.seqs) == max(self.seqs) - min(self.seqs) + 1
        for line in self.results:
            print(f"command {line}")
        print(f"\ndemo finished: {self.messages} messages, {self.readings} readings ({self.bad} not good), "
              f"{self.numbered['windows']} statistics, {self.numbered['events']} alarm events, "
              f"{len(self.results)} command results, {self.numbered['audit']} audit records; "
              f"sequence numbers {min(self.seqs, default=0)}..{max(self.seqs, default=0)} "
              f"{'complete' if complete else 'with gaps'}")
        return 0 if self.readings else 1


class PlainView(View):
    """One line per message: for logs, pipes and CI."""

    def update(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            body = json.loads(payload) if payload else {}
            kind, entries = _numbered(topic, body)
            if not entries:
                print(f"{topic}: {payload[:100].decode(errors='replace')}")
                continue
            bad = sum(entry.get("quality", "good") != "good" for entry in entries)
            print(f"{topic}: {len(entries)} {_KIND_NAMES[kind]}, seq {entries[0]['seq']}..{entries[-1]['seq']}"
                  + (f", {bad} not good" if bad else ""))
        super().update(messages)


class LiveView(View):
    """A table of the latest value of every indicator, redrawn every second to fit the terminal."""

    def update(self, messages: list[tuple[str, bytes]]) -> None:
        super().update(messages)
        size = shutil.get_terminal_size()
        lines = [
            f"demo, {time.monotonic() - self.started_at:.0f} s: {self.messages} messages, {self.readings} readings "
            f"({self.bad} not good). Ctrl-C stops it.",
            *self._status_lines(),
            *[f"  lighting {circuit}: {line}" for circuit, line in sorted(self.circuits.items())],
            *[f"  command {line}" for line in self.results[-3:]],
            "",
        ]
        # Room for the table's header, a line saying what does not fit, and the cursor's line.
        room = max(5, size.lines - len(lines) - 3)
        rows = _fair_share(sorted(self.latest.items()), room)
        asset_width = max((len(asset) for (asset, _), _ in rows), default=5)
        indicator_width = max((len(indicator) for (_, indicator), _ in rows), default=9)
        lines.append(f"  {'asset':<{asset_width}} {'indicator':<{indicator_width}} {'value':>10} {'unit':<5} "
                     f"{'quality':<7} {'seq':>7}  time")
        for (asset, indicator), latest in rows:
            lines.append(f"  {asset:<{asset_width}} {indicator:<{indicator_width}} {_shown(latest.value):>10} "
                         f"{latest.unit:<5} {latest.quality:<7} {latest.seq:>7}  {format_time_ms(latest.ts)[11:19]}")
        if len(rows) < len(self.latest):
            lines.append(f"  … showing {len(rows)} of {len(self.latest)} indicators; a taller terminal shows more")
        # Cut to the width too: a wrapped line would push the table past the bottom of the terminal.
        sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(line[:size.columns] for line in lines) + "\n")
        sys.stdout.flush()

    def _status_lines(self) -> list[str]:
        """The gateway's own status, and its devices counted by state (one line, however many devices)."""
        lines = [f"  {topic.split('/', 1)[1]}: {state}" for topic, state in sorted(self.status.items())
                 if "/device/" not in topic]
        by_state: dict[str, list[str]] = collections.defaultdict(list)
        for topic, state in sorted(self.status.items()):
            if "/device/" in topic:
                by_state[state].append(topic.split("/")[-2])
        if by_state:
            lines.append("  devices: " + ", ".join(
                f"{len(devices)} {state}" + ("" if state == "online" else f" ({', '.join(devices)})")
                for state, devices in sorted(by_state.items())))
        return lines


def _result_line(body: dict[str, Any]) -> str:
    what = f"{body.get('device')}/{body.get('point')} = {json.dumps(body.get('value'))}"
    if body.get("status") == "done":
        detail = f"{body.get('confirmation')}, read back {json.dumps(body.get('read_back'))}"
    else:
        detail = f"{body.get('reason')}: {body.get('message')}"
    return f"{body.get('id')}: {what}: {body.get('status')} ({detail})"


def _circuit_line(body: dict[str, Any]) -> str:
    upcoming = body.get("next") or []
    then = f", next {upcoming[0]['event']} at {upcoming[0]['local'][11:16]}" if upcoming else ""
    held = f", held: {body['held']}" if body.get("held") else ""
    return f"{body.get('mode')}, should be {_shown(body.get('should_be'))}, reads {_shown(body.get('reads'))}" \
           f"{then}{held}"


def _shown(value: object) -> str:
    """A value in at most 10 characters or so; totalisers keep their last digits, so they are seen counting."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.4g}" if abs(value) < 10_000 else f"{value:.1f}"


def _fair_share(rows: Sequence[tuple[tuple[str, str], _Latest]],
                room: int) -> list[tuple[tuple[str, str], _Latest]]:
    """At most `room` of the (sorted) rows, taking every asset's first indicator, then every asset's second,
    and so on, so that each asset stays on screen however many indicators the others have."""
    rank: collections.Counter[str] = collections.Counter()
    ranked = []
    for row in rows:
        ranked.append((rank[row[0][0]], row))
        rank[row[0][0]] += 1
    chosen = sorted(ranked, key=lambda item: item[0])[:room]  # a stable sort keeps the assets in order
    return sorted((row for _, row in chosen), key=lambda row: row[0])
