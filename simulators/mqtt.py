"""A plain MQTT subscriber for the demo's live view, tests and benchmarks: records (topic, payload)
from its own paho thread. Not part of the daemon, whose MQTT client is gateway/publisher.py."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

_SUBSCRIBE_TIMEOUT = 10.0  # seconds from connecting to the broker's SUBACK


class Watcher:
    """Subscribes to one topic filter (QoS 1) and records what arrives."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._received: list[tuple[str, bytes]] = []
        self._awaited: list[tuple[str, bytes, asyncio.Event]] = []
        self._subscribed = asyncio.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watcher-{random.randrange(1 << 32):08x}")
        self._client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    async def start(self) -> None:
        """Connect and return once the broker has confirmed the subscription."""
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        async with asyncio.timeout(_SUBSCRIBE_TIMEOUT):
            await self._subscribed.wait()

    def _on_subscribe(self, *_: Any) -> None:
        self._loop.call_soon_threadsafe(self._subscribed.set)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self._loop.call_soon_threadsafe(self._record, message.topic, bytes(message.payload))

    def _record(self, topic: str, payload: bytes) -> None:
        self._received.append((topic, payload))
        for awaited_topic, fragment, arrived in self._awaited:
            if topic == awaited_topic and fragment in payload:
                arrived.set()

    def take(self) -> list[tuple[str, bytes]]:
        """Everything received since the last call."""
        taken, self._received = self._received, []
        return taken

    async def wait_for(self, topic: str, payload_contains: bytes) -> None:
        """Wait until a message on `topic` whose payload contains `payload_contains` has arrived."""
        arrived = asyncio.Event()
        self._awaited.append((topic, payload_contains, arrived))
        if any(t == topic and payload_contains in p for t, p in self._received):
            arrived.set()
        await arrived.wait()

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish one message with QoS 1 (the demo sends a command as a control room would)."""
        self._client.publish(topic, payload, qos=1)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        # Break paho's reference cycle now, so its socket pair is freed without waiting for the GC.
        self._client.on_connect = self._client.on_subscribe = self._client.on_message = None
