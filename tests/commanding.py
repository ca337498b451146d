"""Helpers for command tests: a site with writable points, and an operator's MQTT 5 client."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.commands.message import sign
from tests.brokers import WAIT, woken_until

RESULT_TOPIC = "city/gateway/test-gw/cmd/result"
COMMAND_TOPIC = "city/gateway/test-gw/cmd"
AUDIT_TOPIC = "city/gateway/test-gw/audit"

CATALOGUE = {
    "domains": [{"id": "water-supply", "name": {"en": "Water supply", "zh": "供水"}}],
    "asset_types": [{"id": "water-pumping-station", "domain": "water-supply",
                     "name": {"en": "Water pumping station", "zh": "供水泵站"},
                     "indicators": ["outlet-pressure", "pressure-setpoint", "pump-run-command", "wet-well-level",
                                    "pump-mode"]}],
    "indicators": [
        {"id": "outlet-pressure", "name": {"en": "Outlet pressure", "zh": "出口压力"}, "kind": "measurement",
         "unit": "kPa", "range": [0, 2500], "quantified": "instantaneous"},
        {"id": "pressure-setpoint", "name": {"en": "Pressure setpoint", "zh": "压力设定"}, "kind": "measurement",
         "unit": "kPa", "range": [0, 2500], "quantified": "instantaneous"},
        {"id": "wet-well-level", "name": {"en": "Wet-well level", "zh": "集水井液位"}, "kind": "measurement",
         "unit": "m", "range": [0, 20], "quantified": "instantaneous"},
        {"id": "pump-run-command", "name": {"en": "Pump run command", "zh": "启停命令"}, "kind": "state",
         "unit": "state", "quantified": "state"},
        {"id": "pump-mode", "name": {"en": "Pump mode", "zh": "泵模式"}, "kind": "state", "unit": "state",
         "quantified": "state"},
    ],
}

ASSET = {"domain": "water-supply", "site": "ps01", "id": "ps01-station", "type": "water-pumping-station"}


def station_points() -> list[dict[str, Any]]:
    """A pumping station's PLC: a pressure setpoint and a pump start/stop that may be written, the rest read."""
    return [
        # Outlet-pressure setpoint: int16 in 0.01 bar (1 kPa a count), may be set to 200..600 kPa in steps of 5.
        {"name": "pressure_setpoint", "indicator": "pressure-setpoint", "table": "holding_register", "address": 0,
         "type": "int16", "unit": "bar", "scale": 0.01, "writable": True,
         "write": {"range": [2.0, 6.0], "step": 0.05, "min_interval": 0}},
        {"name": "outlet_pressure", "indicator": "outlet-pressure", "table": "holding_register", "address": 1,
         "type": "int16", "unit": "kPa"},
        {"name": "wet_well_level", "indicator": "wet-well-level", "table": "holding_register", "address": 2,
         "type": "uint16", "unit": "cm"},
        # Start/stop, refused while the wet well is below 1.2 m.
        {"name": "run_command", "indicator": "pump-run-command", "table": "coil", "address": 0, "writable": True,
         "write": {"guard": "wet-well-level >= 1.2", "min_interval": 0}},
        {"name": "mode", "indicator": "pump-mode", "table": "holding_register", "address": 3, "type": "uint16"},
    ]


def write_site(directory: Path, broker_port: int, modbus_port: int, **commands: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "catalogue.yaml").write_text(yaml.safe_dump(CATALOGUE, allow_unicode=True))
    device = {"id": "plc-1", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": modbus_port,
              "poll_interval": 0.2, "timeout": 1.0, "asset": ASSET, "points": station_points()}
    (directory / "devices.yaml").write_text(yaml.safe_dump({"devices": [device]}))
    main = {
        "gateway": {"id": "test-gw", "state_dir": str(directory / "state")},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "reconnect": {"initial_delay": 0.1, "max_delay": 0.5}},
        "buffer": {"synchronous": "normal"},
        "clock": {"source": "none"},
        "commands": commands,
        "catalogue": "catalogue.yaml",
        "include": ["devices.yaml"],
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(main))
    return path


_ids = itertools.count(1)


def command(point: str = "pressure_setpoint", value: Any = 450.0, *, device: str = "plc-1",
            issued: int | None = None, secret: bytes | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": f"cmd-{next(_ids)}", "device": device, "point": point, "value": value,
                            "issued": issued if issued is not None else time.time_ns() // 1_000_000, **extra}
    if secret is not None:
        body["signature"] = sign(body, secret)
    return body


class Operator:
    """The control room: an MQTT 5 client that sends commands and collects what comes back, by topic."""

    def __init__(self, port: int, *topics: str) -> None:
        self._port = port
        self._topics = topics or (RESULT_TOPIC,)
        self._loop = asyncio.get_running_loop()
        self.messages: list[tuple[str, dict[str, Any], bytes | None]] = []
        self._changed = asyncio.Event()
        self._ready = asyncio.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
        self._client.on_connect = lambda c, u, f, r, p: c.subscribe([(t, 1) for t in self._topics])
        self._client.on_subscribe = lambda c, u, m, r, p: self._loop.call_soon_threadsafe(self._ready.set)
        self._client.on_message = self._on_message

    async def start(self) -> Operator:
        self._client.connect("127.0.0.1", self._port)
        self._client.loop_start()
        async with asyncio.timeout(WAIT):
            await self._ready.wait()
        return self

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def send(self, body: dict[str, Any] | bytes, *, response_topic: str | None = None,
             correlation: bytes | None = None, retain: bool = False) -> None:
        properties = None
        if response_topic is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = response_topic
            if correlation is not None:
                properties.CorrelationData = correlation
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self._client.publish(COMMAND_TOPIC, payload, qos=1, retain=retain, properties=properties).wait_for_publish(WAIT)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", None) if message.properties else None
        entry = (message.topic, json.loads(message.payload), correlation)
        self._loop.call_soon_threadsafe(self._record, entry)

    def _record(self, entry: tuple[str, dict[str, Any], bytes | None]) -> None:
        self.messages.append(entry)
        self._changed.set()

    def on(self, topic: str = RESULT_TOPIC) -> list[dict[str, Any]]:
        return [body for t, body, _ in self.messages if t == topic]

    def results(self, command_id: str, topic: str = RESULT_TOPIC) -> list[dict[str, Any]]:
        return [body for body in self.on(topic) if body.get("id") == command_id]

    async def result(self, command_id: str, count: int = 1, topic: str = RESULT_TOPIC) -> dict[str, Any]:
        """The first result for `command_id`, once `count` have arrived."""
        await woken_until(self._changed, lambda: len(self.results(command_id, topic)) >= count)
        return self.results(command_id, topic)[0]

    async def wait_for(self, condition: Any, what: str = "messages") -> None:
        try:
            await woken_until(self._changed, lambda: condition(self.messages))
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


def values_of(readings: Iterable[dict[str, Any]], indicator: str) -> list[Any]:
    return [r["value"] for r in readings if r["indicator"] == indicator]
