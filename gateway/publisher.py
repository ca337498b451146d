"""The MQTT uplink: drains the store-and-forward buffer to the broker with QoS 1.

This is the only module that imports paho. paho's network loop runs in its own
thread (loop_start); each paho callback is handed to the event loop with
call_soon_threadsafe, so all of our state lives on the event loop thread.

We own reconnection. Every connection attempt gets a fresh paho client with
paho's own reconnect turned off, so a message queued in a dead client can never
be sent later behind our back, and nothing piles up in paho's memory during an
outage: messages are handed to paho only while connected, at most
`max_inflight` at a time. A message is deleted from the buffer only after the
broker's PUBACK; whatever was in flight when a connection drops is fetched
again after the reconnect (possibly a duplicate, recognisable by its seq;
never a loss).

We speak MQTT 3.1.1: every broker a city is likely to run supports it, and
durability comes from our buffer with a clean session, so MQTT 5's session
expiry and flow control would add nothing we use.

Commands from the control room come in on a connection of their own (`CommandChannel`): MQTT 5, so a
result can go to the sender's response topic with its correlation data, with a session the broker keeps
across our reconnects, so a command sent while we were away still arrives, late, and is judged by its
age. A flood of commands on it never holds up the readings on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import SecretStr

from gateway import __version__
from gateway.buffer import Buffer, StoredMessage
from gateway.model.readings import now_ms
from gateway.model.settings import MqttSettings, TlsFileError, TlsSettings, tls_context
from gateway.payload import mark_historical

log = logging.getLogger(__name__)

_CONNACK_TIMEOUT = 10.0  # seconds from TCP connect to the broker's CONNACK
FIRST_RETRY = 0.25  # seconds: the longest random pause before reconnecting after a healthy connection dropped
_GOODBYE_TIMEOUT = 2.0  # seconds to wait for the PUBACK of the offline status at shutdown


def backoff_delay(failures: int, initial: float, maximum: float) -> float:
    """Seconds to wait before the next connection attempt.

    Capped exponential back-off with "equal jitter" (half fixed, half random), so
    the gateways of a whole city do not reconnect in lockstep after a broker outage.
    """
    ceiling = min(maximum, initial * 2.0 ** min(failures, 32))
    return max(initial, ceiling / 2 + random.uniform(0, ceiling / 2))


@dataclass(slots=True)
class PublisherStats:
    published: int = 0  # buffered messages handed to the broker, re-sends included
    bytes_published: int = 0  # their payload bytes
    entries_published: int = 0  # the readings, statistics and alarm events in them (each took one seq)
    acked: int = 0  # buffered messages the broker acknowledged
    reconnects: int = 0  # connections established after the first one
    connect_failures: int = 0
    rejected: int = 0  # messages paho refused to send (invalid topic, oversized); deleted, see the log


class _Refused(ConnectionError):
    """The broker answered CONNECT with a refusal (bad credentials, not authorised, client id rejected)."""


class Publisher:
    """Keeps one MQTT connection up and the buffer drained through it; `run()` until cancelled."""

    def __init__(self, settings: MqttSettings, gateway_id: str, buffer: Buffer, status_topic: str) -> None:
        self._settings = settings
        self._gateway_id = gateway_id
        self._client_id = settings.client_id or gateway_id
        self._buffer = buffer
        self._status_topic = status_topic
        self._where = f"{settings.host}:{settings.port}"
        self._retained: dict[str, bytes] = {}
        # Retained messages made afresh on every connect (the assets' self-descriptions: tens of kB each,
        # not worth holding in memory between connects).
        self._described: Callable[[], Iterable[tuple[str, bytes]]] = lambda: ()
        self._link: _Link | None = None  # the established connection, if any
        self._connected = asyncio.Event()
        # Set when the drain loop may have work: the buffer sets it when it commits new rows; PUBACKs that free
        # room in the window and a lost link set it too. One event, so the loop waits on the buffer directly.
        self._wake = buffer.new_data
        self._idle = asyncio.Event()  # set when the buffer had nothing more to send and nothing is in flight
        # Rows whose PUBACK has arrived but whose deletion is not committed yet; never sent again meanwhile.
        self._acked: set[int] = set()
        self._acks_pending = asyncio.Event()
        # Refill the window once half of it is free, so a long backlog drains in batches, not row by row.
        self._refill_at = settings.max_inflight // 2
        self._backlogged = False  # the last fetch filled the window, so more rows may be waiting
        self._history_left = 0  # rows of the history (committed before this connection) not yet acknowledged
        # Pulsed after each batch of acknowledged rows is deleted (and when the connection drops).
        self.acknowledged = asyncio.Event()
        self._last_problem: str | None = None
        self._ever_connected = False
        self._health: dict[str, object] = {}  # figures the retained online status carries (update_status)
        self.stats = PublisherStats()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def broker(self) -> str:
        return self._where

    @property
    def connected_since_ms(self) -> int | None:
        """When the current connection was established; None while not connected."""
        link = self._link
        return link.connected_at_ms if link is not None and link.is_up else None

    @property
    def problem(self) -> str | None:
        """The last connection problem logged, until a connection succeeds."""
        return self._last_problem

    def update_status(self, health: dict[str, object]) -> None:
        """Figures the retained online status carries from now on (buffer, process); published now if connected.
        The Last Will stays a plain `offline`."""
        self._health = health
        link = self._link
        if link is not None and link.is_up:
            link.publish(self._status_topic, self._online_status(link), retain=True)

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def flush(self, limit: float) -> bool:
        """Wait up to `limit` seconds for everything in the buffer to be acknowledged (at shutdown).

        Returns False when not connected or not done in time; what is left stays in the buffer.
        """
        if not self.connected:
            return False
        self._idle.clear()
        self._wake.set()  # make the drain loop look at the buffer afresh
        try:
            async with asyncio.timeout(limit):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def describe_with(self, descriptions: Callable[[], Iterable[tuple[str, bytes]]]) -> None:
        """On every connect, publish retained each (topic, body) that `descriptions()` gives, made then."""
        self._described = descriptions

    def set_retained(self, topic: str, body: bytes) -> None:
        """Publish `body` retained on `topic` now if connected, and again after every reconnect."""
        self._retained[topic] = body
        if self._link is not None and self._link.is_up:
            self._link.publish(topic, body, retain=True)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._delete_acked_forever(), name="mqtt-delete-acked")
                tasks.create_task(self._stay_connected(), name="mqtt-connection")
        finally:
            # PUBACKs that arrived during shutdown: delete those rows so a restart does not send them again.
            await self._delete_acked()

    # -- connection ---------------------------------------------------------------------------------------

    async def _stay_connected(self) -> None:
        failures = 0
        reconnect = self._settings.reconnect
        while True:
            try:
                await self._connect_and_serve()
                failures = 0
                # The connection was healthy and went away: try again almost at once (the broker restarted, a
                # network blip), with a little jitter so a city's gateways do not all arrive in the same instant.
                delay = random.uniform(0, min(FIRST_RETRY, reconnect.initial_delay))
            except _Refused as refusal:
                self.stats.connect_failures += 1
                self._report_problem(logging.ERROR, f"MQTT broker {self._where} refused the connection: {refusal}; "
                                     "check mqtt.username, mqtt.password and the client id")
                # Retrying quickly cannot fix credentials and would hammer the broker.
                delay = reconnect.refused_delay
            except TlsFileError as error:  # a file changed since the configuration was checked
                self.stats.connect_failures += 1
                self._report_problem(logging.ERROR, f"Cannot connect to MQTT broker {self._where}: mqtt.tls.{error}")
                delay = reconnect.max_delay
            except OSError as error:
                self.stats.connect_failures += 1
                self._report_problem(logging.WARNING, f"Cannot connect to MQTT broker {self._where}: "
                                     f"{_explain(error, self._settings.tls)}")
                delay = backoff_delay(failures, reconnect.initial_delay, reconnect.max_delay)
                failures += 1
            log.debug("Reconnecting to MQTT broker %s in %.1f s", self._where, delay)
            await asyncio.sleep(delay)

    def _report_problem(self, level: int, message: str) -> None:
        """Log a connection problem once; while the same problem persists, only at debug level."""
        log.log(level if message != self._last_problem else logging.DEBUG, "%s", message)
        self._last_problem = message

    async def _connect_and_serve(self) -> None:
        """Connect once and drain the buffer until that connection drops; raise if it cannot be established."""
        # What is in the buffer now waited across an outage or a restart: the history, sent after live readings.
        history_until = await self._buffer.last_id()
        self._history_left = self._buffer.waiting
        link = _Link(self._client_id, asyncio.get_running_loop(), self._on_puback, self._wake.set, history_until)
        try:
            await link.open(self._settings, self._status_topic, self._will())
            await self._serve(link)
        finally:
            if link.is_up:  # we are being cancelled: say goodbye properly, so the broker drops the Will
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_GOODBYE_TIMEOUT):
                        await link.publish_confirmed(self._status_topic, self._status("offline", reason="shutdown"))
            await link.close()

    async def _serve(self, link: _Link) -> None:
        if self._ever_connected:
            self.stats.reconnects += 1
        self._ever_connected = True
        self._last_problem = None
        log.info("Connected to MQTT broker %s as %s", self._where, self._client_id)
        link.publish(self._status_topic, self._online_status(link), retain=True)
        for topic, body in self._described():
            link.publish(topic, body, retain=True)
        for topic, body in self._retained.items():
            link.publish(topic, body, retain=True)
        self._link = link
        self._connected.set()
        try:
            await self._drain(link)
        finally:
            self._connected.clear()
            self._link = None
            await self._buffer.stop_hand_over()
            _pulse(self.acknowledged)  # whoever waits for the backlog to shrink: there is none while down
        log.warning("Lost connection to MQTT broker %s (%s); %d unacknowledged messages will be sent again",
                    self._where, link.down_reason, len(link.inflight))

    def _online_status(self, link: _Link) -> bytes:
        return self._status("online", since=link.connected_at_ms, **self._health)

    def _status(self, state: str, **fields: object) -> bytes:
        return json.dumps({"state": state, "gateway": self._gateway_id, **fields,
                           "version": __version__}, separators=(",", ":")).encode()

    def _will(self) -> bytes:
        # The broker sends this when the connection dies; it cannot know when, so it says when we went online.
        return self._status("offline", reason="connection-lost", online_since=now_ms())

    # -- draining -----------------------------------------------------------------------------------------

    async def _drain(self, link: _Link) -> None:
        """Keep up to max_inflight buffered messages in flight on `link` until it drops."""
        while link.is_up:
            self._wake.clear()  # before fetching, so a commit during the fetch still wakes us afterwards
            room = self._settings.max_inflight - len(link.inflight)
            rows = []
            if room > 0:
                # What the last commits stored, handed over as they were written (no read back), once this
                # connection has caught up with the table; until then, and after a drop, from the table.
                rows = self._buffer.take_fresh(room) or await self._buffer.fetch(
                    room, exclude=self._acked.union(link.inflight.values()), live_after=link.history_until,
                    hand_over=True)
                for row in rows:
                    if not link.is_up:
                        break
                    self._send(link, row)
            # Rows may be left over only when the window was the limit; then PUBACKs must wake us too.
            self._backlogged = room <= 0 or len(rows) == room
            if not rows and not link.inflight:
                self._idle.set()  # everything committed so far is acknowledged
            await self._wake.wait()

    def _send(self, link: _Link, row: StoredMessage) -> None:
        # Committed before this connection attempt began: it waited in the buffer across an outage or a
        # restart. (Not "before the CONNACK": a poll finished while we were merely connecting is live.)
        body = mark_historical(row.body) if row.id <= link.history_until else row.body
        try:
            mid = link.publish(row.topic, body)
        except ValueError as error:  # invalid topic or oversized body: left in place it would block the queue
            self.stats.rejected += 1
            log.error("Dropping buffered message %d on topic %r: %s", row.id, row.topic, error)
            self._delete_soon(row.id)
            return
        if mid is not None:
            link.inflight[mid] = row.id
            self.stats.published += 1
            self.stats.bytes_published += len(body)
            self.stats.entries_published += row.last_seq - row.first_seq + 1

    def _on_puback(self, link: _Link, mid: int) -> None:
        row_id = link.inflight.pop(mid, None)
        if row_id is None:
            return  # a status or retained message; not from the buffer
        self.stats.acked += 1
        if row_id <= link.history_until:
            self._history_left -= 1
        self._delete_soon(row_id)
        if (self._backlogged and len(link.inflight) <= self._refill_at) or not link.inflight:
            self._wake.set()

    def _delete_soon(self, row_id: int) -> None:
        self._acked.add(row_id)
        self._acks_pending.set()

    async def _delete_acked_forever(self) -> None:
        # One task deletes acknowledged rows, batching whatever PUBACKs arrived while the last batch was written.
        while True:
            await self._acks_pending.wait()
            self._acks_pending.clear()
            await self._delete_acked()

    async def _delete_acked(self) -> None:
        while self._acked:
            batch = set(self._acked)
            await self._buffer.ack(batch)
            self._acked -= batch
            _pulse(self.acknowledged)

    def live_backlog(self) -> int:
        """Messages committed since this connection began and not yet acknowledged: what grows when the gateway
        makes readings faster than it gets them to a connected broker. 0 while disconnected (what an outage
        accumulates is the buffer's to keep, not a reason to poll less)."""
        if self._link is None:
            return 0
        return max(0, self._buffer.waiting - self._history_left)


class _Link:
    """One paho client, i.e. one connection attempt; never reused once it is closed.

    paho callbacks arrive on paho's thread and are passed on to the event loop.
    """

    def __init__(self, client_id: str, loop: asyncio.AbstractEventLoop,
                 on_puback: Callable[[_Link, int], None], on_down: Callable[[], None], history_until: int) -> None:
        self._loop = loop
        self._on_puback = on_puback
        self._on_down = on_down
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=mqtt.MQTTv311, clean_session=True, reconnect_on_failure=False)
        # Our window bounds what is in flight; paho must not hold messages back in a queue of its own.
        self._client.max_inflight_messages_set(0)
        self._client.on_connect = self._paho_connect
        self._client.on_disconnect = self._paho_disconnect
        self._client.on_publish = self._paho_publish
        self._settled = asyncio.Event()  # CONNACK received, or the connection ended before it
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._refusal: str | None = None
        self._receipts: dict[int, asyncio.Future[bool]] = {}  # mids whose PUBACK someone awaits
        self.down_reason = ""
        self.history_until = history_until  # buffer rows up to this id were committed before this connection
        self.connected_at_ms = 0
        self.inflight: dict[int, int] = {}  # paho mid -> buffer row id

    @property
    def is_up(self) -> bool:
        return self._up.is_set() and not self._down.is_set()

    async def open(self, settings: MqttSettings, will_topic: str, will: bytes) -> None:
        """Connect and wait for the CONNACK; raise OSError (network, TLS, files, timeout) or _Refused."""
        await _uninterrupted(lambda: self._open_blocking(settings, will_topic, will))
        try:
            async with asyncio.timeout(_CONNACK_TIMEOUT):
                await self._settled.wait()
        except TimeoutError:
            raise TimeoutError(f"no CONNACK within {_CONNACK_TIMEOUT:.0f} s") from None
        if self._refusal is not None:
            raise _Refused(self._refusal)
        if not self.is_up:
            raise ConnectionError(f"connection closed before CONNACK ({self.down_reason})")

    def _open_blocking(self, settings: MqttSettings, will_topic: str, will: bytes) -> None:
        # Runs in a worker thread: reads secret files, loads certificates, resolves, connects, TLS handshake.
        self._client.will_set(will_topic, will, qos=1, retain=True)
        if settings.username is not None:
            self._client.username_pw_set(settings.username, _secret(settings.password, settings.password_file))
        tls = _tls_context(settings.tls) if settings.tls is not None else None
        if tls is not None:
            self._client.tls_set_context(tls)
        try:
            self._client.connect(settings.host, settings.port, settings.keepalive)
        except OSError:
            if tls is not None and tls.wrapped is not None:
                tls.wrapped.close()
            raise
        self._client.loop_start()

    def publish(self, topic: str, body: bytes, retain: bool = False) -> int | None:
        """Hand one QoS 1 message to paho; its message id, or None when the connection is gone."""
        info = self._client.publish(topic, body, qos=1, retain=retain)
        return info.mid if info.rc == mqtt.MQTT_ERR_SUCCESS else None

    async def publish_confirmed(self, topic: str, body: bytes) -> bool:
        """Publish retained and wait for the PUBACK; False if the connection dropped first."""
        mid = self.publish(topic, body, retain=True)
        if mid is None:
            return False
        receipt: asyncio.Future[bool] = self._loop.create_future()
        self._receipts[mid] = receipt
        return await receipt

    async def close(self) -> None:
        """Disconnect cleanly if still connected (the broker then discards the Will) and stop paho's thread."""
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        # Our callbacks and the client form a reference cycle; break it so paho frees the client (and
        # closes its internal socket pair) now rather than whenever the garbage collector runs.
        self._client.on_connect = self._client.on_disconnect = self._client.on_publish = None

    # -- paho's thread ------------------------------------------------------------------------------------

    def _paho_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                      reason: ReasonCode, properties: Any) -> None:
        self._loop.call_soon_threadsafe(self._connack, reason.is_failure, str(reason))

    def _paho_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                         reason: ReasonCode, properties: Any) -> None:
        # paho reports a plain dropped connection as "Unspecified error"; say what it means.
        why = "connection closed" if str(reason) == "Unspecified error" else str(reason)
        self._loop.call_soon_threadsafe(self._lost, why)

    def _paho_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason: ReasonCode, properties: Any) -> None:
        self._loop.call_soon_threadsafe(self._puback, mid)

    # -- back on the event loop ---------------------------------------------------------------------------

    def _connack(self, refused: bool, reason: str) -> None:
        if refused:
            self._refusal = reason
        else:
            self.connected_at_ms = now_ms()
            self._up.set()
        self._settled.set()

    def _lost(self, reason: str) -> None:
        if self._down.is_set():
            return
        self.down_reason = reason
        self._down.set()
        self._settled.set()
        for receipt in self._receipts.values():
            if not receipt.done():
                receipt.set_result(False)
        self._on_down()

    def _puback(self, mid: int) -> None:
        receipt = self._receipts.pop(mid, None)
        if receipt is not None:
            if not receipt.done():
                receipt.set_result(True)
            return
        self._on_puback(self, mid)


class Acknowledgement:
    """The PUBACK of one command, sent once, when the gateway has it in its audit log: a command that a crash
    cuts short before then is delivered again by the broker (the session is kept) rather than lost."""

    __slots__ = ("_client", "_mid", "_qos")

    def __init__(self, client: mqtt.Client | None = None, mid: int = 0, qos: int = 0) -> None:
        self._client, self._mid, self._qos = client, mid, qos

    def __call__(self) -> None:
        client, self._client = self._client, None
        if client is not None:  # on the connection it came by; on a closed one paho sends nothing
            client.ack(self._mid, self._qos)


@dataclass(frozen=True, slots=True)
class IncomingCommand:
    """One message on the command topic, as the broker delivered it."""

    payload: bytes
    retained: bool
    response_topic: str | None  # MQTT 5: where the sender wants the result
    correlation: bytes | None  # MQTT 5: what the sender wants back with it
    acknowledge: Acknowledgement = field(default_factory=Acknowledgement)  # once it is in the audit log


class CommandChannel:
    """A connection of its own for commands: subscribes to `topic` (QoS 1) on every connect and hands each
    message to `on_command` on the event loop; `reply` publishes a result. MQTT 5 with a session the broker
    keeps `session_expiry` seconds; a broker that only speaks 3.1.1 gets 3.1.1 (no response topics then).
    A command is acknowledged (PUBACK) only when the command path calls its `acknowledge`."""

    def __init__(self, settings: MqttSettings, client_id: str, topic: str, session_expiry: float,
                 on_command: Callable[[IncomingCommand], None], mqtt5: bool = True) -> None:
        self._settings = settings
        self._client_id = client_id
        self._topic = topic
        self._session_expiry = int(session_expiry)
        self._on_command = on_command
        self._where = f"{settings.host}:{settings.port}"
        self._client: mqtt.Client | None = None
        self._subscribed = asyncio.Event()
        self._down = asyncio.Event()
        self._version = mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311
        self._last_problem: str | None = None

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    async def wait_subscribed(self) -> None:
        await self._subscribed.wait()

    async def run(self) -> None:
        failures = 0
        reconnect = self._settings.reconnect
        while True:
            try:
                await self._connect_and_listen()
                failures = 0
                delay = random.uniform(0, min(FIRST_RETRY, reconnect.initial_delay))
            except OSError as error:
                message = f"command channel: cannot connect to MQTT broker {self._where}: {error}"
                log.log(logging.WARNING if message != self._last_problem else logging.DEBUG, "%s", message)
                self._last_problem = message
                delay = backoff_delay(failures, reconnect.initial_delay, reconnect.max_delay)
                failures += 1
            await asyncio.sleep(delay)

    def reply(self, topic: str, body: bytes, correlation: bytes | None = None) -> bool:
        """Publish one result (QoS 1); False when not connected (the audit log has it anyway)."""
        client = self._client
        if client is None:
            return False
        properties = None
        if correlation is not None and self._version == mqtt.MQTTv5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = correlation
        try:
            info = client.publish(topic, body, qos=1, properties=properties)
        except ValueError as error:  # an invalid response topic chosen by the sender
            log.warning("command channel: cannot publish a result on %r: %s", topic, error)
            return False
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    async def _connect_and_listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._down.clear()
        settled = asyncio.Event()
        refusal: list[str] = []
        v5 = self._version == mqtt.MQTTv5
        if v5:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=mqtt.MQTTv5,
                                 reconnect_on_failure=False, manual_ack=True)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=mqtt.MQTTv311,
                                 clean_session=False, reconnect_on_failure=False, manual_ack=True)

        def connected(refused: bool, reason: str) -> None:
            if refused:
                refusal.append(reason)
            else:
                self._client = client  # a kept session's queued commands may arrive before our SUBACK
                client.subscribe(self._topic, options=SubscribeOptions(qos=1)) if v5 else \
                    client.subscribe(self._topic, qos=1)
            settled.set()

        def lost() -> None:
            self._subscribed.clear()
            self._down.set()
            settled.set()

        def message(payload: bytes, retained: bool, properties: Any, ack: Acknowledgement) -> None:
            response = getattr(properties, "ResponseTopic", None) if properties is not None else None
            correlation = getattr(properties, "CorrelationData", None) if properties is not None else None
            self._on_command(IncomingCommand(payload, retained, response, correlation, ack))

        # paho's thread: each callback is handed to the event loop.
        def on_connect(c: mqtt.Client, u: Any, f: Any, reason: ReasonCode, p: Any) -> None:
            loop.call_soon_threadsafe(connected, reason.is_failure, str(reason))

        def on_disconnect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
            loop.call_soon_threadsafe(lost)

        def subscribed(refused: bool) -> None:
            if refused:  # an ACL that denies the topic: no command can arrive, so say so
                log.warning("command channel: MQTT broker %s refused the subscription to %s", self._where,
                            self._topic)
            else:
                self._subscribed.set()
                log.info("command channel listening on %s", self._topic)

        def on_subscribe(c: mqtt.Client, u: Any, mid: int, reasons: list[ReasonCode], p: Any) -> None:
            loop.call_soon_threadsafe(subscribed, any(reason.is_failure for reason in reasons))

        def on_message(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
            loop.call_soon_threadsafe(message, bytes(m.payload), bool(m.retain), getattr(m, "properties", None),
                                      Acknowledgement(c, m.mid, m.qos))

        client.on_connect, client.on_disconnect = on_connect, on_disconnect
        client.on_subscribe, client.on_message = on_subscribe, on_message

        def open_blocking() -> None:
            if self._settings.username is not None:
                client.username_pw_set(self._settings.username,
                                       _secret(self._settings.password, self._settings.password_file))
            if self._settings.tls is not None:
                client.tls_set_context(_tls_context(self._settings.tls))
            if v5:
                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = self._session_expiry
                client.connect(self._settings.host, self._settings.port, self._settings.keepalive,
                               clean_start=False, properties=properties)
            else:
                client.connect(self._settings.host, self._settings.port, self._settings.keepalive)
            _no_delay(client)
            client.loop_start()

        try:
            await _uninterrupted(open_blocking)
            try:
                async with asyncio.timeout(_CONNACK_TIMEOUT):
                    await settled.wait()
            except TimeoutError:
                raise TimeoutError(f"no CONNACK within {_CONNACK_TIMEOUT:.0f} s") from None
            if refusal or self._down.is_set():
                if v5 and (not refusal or "protocol" in refusal[0].lower()):
                    self._version = mqtt.MQTTv311  # a broker that does not speak MQTT 5: no response topics
                raise _Refused(refusal[0]) if refusal else ConnectionError("connection closed before CONNACK")
            self._last_problem = None
            log.info("command channel connected to MQTT broker %s", self._where)
            await self._down.wait()
            log.warning("command channel lost its connection to MQTT broker %s", self._where)
        finally:
            self._client = None
            self._subscribed.clear()
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
            client.on_connect = client.on_disconnect = client.on_message = client.on_subscribe = None


def _no_delay(client: mqtt.Client) -> None:
    """Send each result at once: without TCP_NODELAY the kernel holds a result published right after the
    PUBACK of its command until the broker acknowledges that (a delayed ACK: 40 ms on Linux)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):  # an SSLSocket too
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _uninterrupted(blocking: Callable[[], None]) -> None:
    """Run `blocking` in a worker thread. If we are cancelled meanwhile, still wait for it to finish
    (connect() gives up within paho's connect_timeout), so close() then sees and closes what it opened."""
    job = asyncio.get_running_loop().run_in_executor(None, blocking)
    try:
        await asyncio.shield(job)
    except asyncio.CancelledError:
        await asyncio.wait([job])
        job.exception()  # retrieved, so asyncio does not log it as forgotten; we are leaving anyway
        raise


def _pulse(event: asyncio.Event) -> None:
    """Wake whoever waits on `event` now, without leaving it set."""
    event.set()
    event.clear()


def _explain(error: OSError, tls: TlsSettings | None) -> str:
    """A connection error in the words of the settings that can fix it, rather than OpenSSL's."""
    if isinstance(error, ssl.SSLCertVerificationError):
        what = error.verify_message or str(error)
        if "mismatch" in what:
            return (f"the broker's certificate is not for this host name ({what}); mqtt.host must be a name the "
                    "certificate holds (or mqtt.tls.verify_hostname: false)")
        trusted = f"mqtt.tls.ca_file {tls.ca_file}" if tls is not None and tls.ca_file else "the system's CAs"
        return f"the broker's certificate is not trusted by {trusted} ({what})"
    if isinstance(error, ssl.SSLError) and any(alert in str(error.reason) for alert in _CLIENT_CERT_ALERTS):
        ours = f"mqtt.tls.cert_file {tls.cert_file}" if tls is not None and tls.cert_file else "none configured"
        return f"the broker did not accept our client certificate ({ours}; OpenSSL: {error.reason})"
    if tls is not None and isinstance(error, ConnectionError) and "before CONNACK" in str(error):
        return (f"{error}; over TLS this is how a broker that requires a client certificate refuses one it does not "
                "accept: check mqtt.tls.cert_file and the broker's CA for client certificates")
    return str(error)


_CLIENT_CERT_ALERTS = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_UNKNOWN")


def _secret(value: SecretStr | None, file: Path | None) -> str | None:
    """A password given inline or in a file (read at every connect, so a rotated secret is picked up)."""
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        return file.read_text(encoding="utf-8").strip()
    return None


class _TlsContext(ssl.SSLContext):
    """An SSLContext that remembers the last socket it wrapped.

    paho leaves the socket open when the TLS handshake fails (wrong CA, wrong host
    name); this lets us close it instead of leaking one per retry until the GC runs.
    """

    wrapped: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.wrapped = super().wrap_socket(*args, **kwargs)
        return self.wrapped


def _tls_context(tls: TlsSettings) -> _TlsContext:
    """What paho's tls_set() builds (certificate always verified), made on every connect so renewed files count
    (the configuration's check loaded them once already: an error here means a file changed since)."""
    return tls_context(tls, _TlsContext)  # paho takes its own host name check from the context too
