"""The MQTT publisher against a real mosquitto: delivery, back-pressure, outages, status, auth and TLS."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest
from pydantic import SecretStr

from gateway.buffer import Buffer, Message
from gateway.model.settings import MqttSettings, ReconnectSettings, TlsSettings
from gateway.publisher import Publisher, backoff_delay
from tests.brokers import WAIT, Broker, Received, TlsFiles, eventually, free_port
from tests.conftest import BrokerFactory, SubscriberFactory

GATEWAY = "gw-1"
TOPIC = "city/water/site-1/pump-1/data"
STATUS = f"city/gateway/{GATEWAY}/status"


def settings(port: int, **overrides: Any) -> MqttSettings:
    overrides.setdefault("reconnect", ReconnectSettings(initial_delay=0.05, max_delay=0.3))
    return MqttSettings(host="127.0.0.1", port=port, **overrides)


def body(seq: int) -> bytes:
    return b'{"historical":false,"seq":%d}' % seq


def seqs(messages: list[Received]) -> list[int]:
    return [json.loads(m.payload)["seq"] for m in messages]


def first_occurrences(numbers: list[int]) -> list[int]:
    return list(dict.fromkeys(numbers))


def state(message: Received) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(message.payload)
    return decoded


async def commit(buffer: Buffer, numbers: range, batch: int = 10) -> None:
    for start in range(numbers.start, numbers.stop, batch):
        chunk = range(start, min(start + batch, numbers.stop))
        await buffer.commit([Message(TOPIC, body(seq), first_seq=seq, last_seq=seq) for seq in chunk])


async def stored(buffer: Buffer) -> int:
    return (await buffer.stats()).messages


async def buffer_empty(buffer: Buffer) -> bool:
    return await stored(buffer) == 0


async def connected(publisher: Publisher) -> None:
    async with asyncio.timeout(WAIT):
        await publisher.wait_connected()


def paho_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == f"paho-mqtt-client-{GATEWAY}"]


@asynccontextmanager
async def running(publisher: Publisher) -> AsyncIterator[asyncio.Task[None]]:
    """Run the publisher for the body of the `with`; then cancel it, as the daemon does at shutdown."""
    task = asyncio.create_task(publisher.run(), name="publisher")
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(WAIT):  # a hung shutdown fails here rather than at the suite's timeout
                await task
        assert not publisher.connected
        await eventually(lambda: paho_threads() == [], "paho's network thread to end")


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[Buffer]:
    opened = await Buffer.open(tmp_path / "buffer.sqlite", max_bytes=10 * 1024 * 1024)
    yield opened
    await opened.close()


def drop_connection(port: int, keep_local_port: int) -> None:
    """Tear down our process's TCP connection to `port` except the one from `keep_local_port`,
    as a dying network would: no DISCONNECT, so the broker must publish the Last Will."""
    victims = [c for c in psutil.Process().net_connections(kind="tcp")
               if c.raddr and c.raddr.port == port and c.laddr.port != keep_local_port]
    assert len(victims) == 1, victims
    duplicate = socket.socket(fileno=os.dup(victims[0].fd))
    duplicate.shutdown(socket.SHUT_RDWR)
    duplicate.close()


# -- pure functions ---------------------------------------------------------------------------------------

def test_backoff_stays_between_initial_and_max_and_grows() -> None:
    delays = [backoff_delay(failures, 1.0, 60.0) for failures in range(40)]
    assert all(1.0 <= delay <= 60.0 for delay in delays)
    assert min(delays[10:]) >= 30.0, "after many failures the delay sits near the cap"


# -- delivery ---------------------------------------------------------------------------------------------

async def test_delivers_in_order_with_qos1_and_deletes_only_after_puback(
        broker: Broker, mqtt_subscriber: SubscriberFactory, buffer: Buffer) -> None:
    subscriber = await mqtt_subscriber(broker, TOPIC)
    publisher = Publisher(settings(broker.port, max_inflight=10), GATEWAY, buffer, STATUS)
    async with running(publisher):
        await connected(publisher)
        broker.pause()  # from now on no PUBACK comes back
        await commit(buffer, range(1, 26))
        await eventually(lambda: publisher.stats.published >= 10, "a full window in flight")
        assert publisher.stats.published == 10, "never more than max_inflight messages without PUBACK"
        assert publisher.stats.acked == 0
        assert await stored(buffer) == 25, "nothing leaves the buffer before the broker acknowledges it"

        broker.resume()
        received = await subscriber.wait_count(25, TOPIC)
        await eventually(lambda: buffer_empty(buffer), "an empty buffer")
    assert seqs(received) == list(range(1, 26))
    assert {m.qos for m in received} == {1}
    assert not any(state(m)["historical"] for m in received), "sent while connected: live, not historical"
    assert publisher.stats.acked == 25


async def test_keeps_retrying_while_the_broker_is_down_and_delivers_once_it_is_up(
        broker_factory: BrokerFactory, mqtt_subscriber: SubscriberFactory, buffer: Buffer) -> None:
    broker = broker_factory(persistence=True)
    # A persistent session, so the broker queues for the subscriber whatever arrives before it is back.
    subscriber = await mqtt_subscriber(broker, TOPIC, clean_session=False, client_id="test-persistent")
    broker.stop()

    publisher = Publisher(settings(broker.port), GATEWAY, buffer, STATUS)
    async with running(publisher):
        await commit(buffer, range(1, 6))
        await eventually(lambda: publisher.stats.connect_failures >= 3, "repeated connection attempts")
        assert not publisher.connected
        assert publisher.stats.published == 0, "nothing is handed to paho while disconnected"
        assert await stored(buffer) == 5

        broker.start()
        received = await subscriber.wait_count(5, TOPIC)
        await eventually(lambda: buffer_empty(buffer), "an empty buffer")
    assert seqs(received) == [1, 2, 3, 4, 5]
    assert all(state(m)["historical"] for m in received), "they waited in the buffer across the outage"


async def test_every_message_arrives_across_a_broker_restart_live_ones_first_each_stream_in_order(
        broker_factory: BrokerFactory, mqtt_subscriber: SubscriberFactory, buffer: Buffer) -> None:
    broker = broker_factory(persistence=True)
    subscriber = await mqtt_subscriber(broker, TOPIC, clean_session=False, client_id="test-persistent")
    publisher = Publisher(settings(broker.port, max_inflight=20), GATEWAY, buffer, STATUS)
    async with running(publisher):
        await connected(publisher)
        broker.pause()
        await commit(buffer, range(1, 201))
        await eventually(lambda: publisher.stats.published >= 20, "a full window in flight")
        broker.stop()  # the window is lost with the connection, unacknowledged
        await eventually(lambda: not publisher.connected, "the publisher to notice")
        await commit(buffer, range(201, 251))
        broker.start()
        await connected(publisher)
        broker.pause()  # the history fills the window; what is committed now is live
        await commit(buffer, range(251, 301))
        broker.resume()

        await subscriber.wait_for(lambda messages: set(seqs(messages)) >= set(range(1, 301)), "seq 1..300")
        await eventually(lambda: buffer_empty(buffer), "an empty buffer")
    received = subscriber.on(TOPIC)
    arrivals = first_occurrences(seqs(received))
    history = [seq for seq in arrivals if seq <= 250]
    live = [seq for seq in arrivals if seq > 250]
    assert sorted(arrivals) == list(range(1, 301))
    assert history == list(range(1, 251)) and live == list(range(251, 301)), "each stream in order"
    assert arrivals.index(251) < arrivals.index(250), "live readings do not wait behind the history"
    first_seen: dict[int, bool] = {}
    for message in received:
        first_seen.setdefault(state(message)["seq"], state(message)["historical"])
    assert all(first_seen[seq] for seq in range(201, 251)), "committed during the outage: historical"
    assert not any(first_seen[seq] for seq in range(251, 301)), "committed while connected: live"
    assert publisher.stats.reconnects == 1


# -- status and retained messages -------------------------------------------------------------------------

async def test_last_will_says_offline_when_the_connection_dies_and_online_follows_on_reconnect(
        broker: Broker, mqtt_subscriber: SubscriberFactory, buffer: Buffer) -> None:
    subscriber = await mqtt_subscriber(broker, STATUS)
    publisher = Publisher(settings(broker.port), GATEWAY, buffer, STATUS)
    async with running(publisher):
        await connected(publisher)
        await subscriber.wait_count(1, STATUS)
        drop_connection(broker.port, keep_local_port=subscriber.local_port())
        await subscriber.wait_count(3, STATUS)
    online, will, online_again = (state(m) for m in subscriber.on(STATUS)[:3])
    assert online["state"] == "online" and online["gateway"] == GATEWAY and online["since"] > 0
    assert will["state"] == "offline" and will["reason"] == "connection-lost" and will["gateway"] == GATEWAY
    assert online_again["state"] == "online" and online_again["since"] >= online["since"]
    assert publisher.stats.reconnects == 1


async def test_clean_shutdown_publishes_retained_offline_and_disconnects_properly(
        broker: Broker, mqtt_subscriber: SubscriberFactory, buffer: Buffer) -> None:
    publisher = Publisher(settings(broker.port), GATEWAY, buffer, STATUS)
    async with running(publisher):
        await connected(publisher)
    late = await mqtt_subscriber(broker, STATUS)
    (status,) = await late.wait_count(1, STATUS)
    assert status.retain and state(status)["state"] == "offline" and state(status)["reason"] == "shutdown"
    # A DISCONNECT packet, not a dropped socket: so the broker discards the Will instead of sending it.
    await eventually(lambda: f"Client {GATEWAY} disconnected" in broker.log(), "a clean DISCONNECT")


async def test_shutdown_does_not_hang_when_the_broker_stops_answering(
        broker: Broker, mqtt_subscriber: SubscriberFactory, buffer: Buffer) -> None:
    publisher = Publisher(settings(broker.port), GATEWAY, buffer, STATUS)
    async with running(publisher):
        await connected(publisher)
        await commit(buffer, range(1, 4))
        await eventually(lambda: publisher.stats.acked == 3, "three acknowledged messages")
        broker.pause()  # the offline status will never be acknowledged: shutdown must give up waiting
    broker.resume()
    assert await stored(buffer) == 0, "rows acknowledged before shutdown are deleted"


async def test_retained_status_and_descriptions_are_published_on_every_connect(
        broker: Broker, mqtt_subscriber: SubscriberFactory, buffer: Buffer) -> None:
    first, second = "city/water/site-1/pump-1/description", "city/water/site-1/pump-2/description"
    expected = {STATUS, first, second}
    watcher = await mqtt_subscriber(broker, "city/#")
    publisher = Publisher(settings(broker.port), GATEWAY, buffer, STATUS)
    publisher.set_retained(first, b'{"asset":"pump-1"}')  # before connecting
    async with running(publisher):
        await connected(publisher)
        publisher.set_retained(second, b'{"asset":"pump-2"}')  # while connected: published at once
        await watcher.wait_for(lambda messages: {m.topic for m in messages} >= expected, "status and both")
        late = await mqtt_subscriber(broker, "city/#")
        await late.wait_for(lambda messages: {m.topic for m in messages if m.retain} >= expected, "retained")

        broker.stop()  # not persistent: the new broker process knows no retained messages
        broker.start()
        await eventually(lambda: publisher.stats.reconnects == 1 and publisher.connected, "a reconnect")
        fresh = await mqtt_subscriber(broker, "city/#")
        await fresh.wait_for(lambda messages: {m.topic for m in messages} >= expected, "re-published")
        again = await mqtt_subscriber(broker, "city/#")
        await again.wait_for(lambda messages: {m.topic for m in messages if m.retain} >= expected, "retained")
    status = next(m for m in again.messages if m.topic == STATUS)
    assert state(status)["state"] == "online"
    assert next(m for m in again.messages if m.topic == second).payload == b'{"asset":"pump-2"}'


# -- authentication and TLS -------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["inline", "file"])
async def test_username_and_password(source: str, broker_factory: BrokerFactory, buffer: Buffer,
                                     tmp_path: Path) -> None:
    broker = broker_factory(users={"gateway": "s3cret"})
    if source == "inline":
        credentials: dict[str, Any] = {"password": SecretStr("s3cret")}
    else:
        (tmp_path / "mqtt-password").write_text("s3cret\n")  # as systemd credentials often end
        credentials = {"password_file": tmp_path / "mqtt-password"}
    publisher = Publisher(settings(broker.port, username="gateway", **credentials), GATEWAY, buffer, STATUS)
    async with running(publisher):
        await connected(publisher)
        await commit(buffer, range(1, 4))
        await eventually(lambda: buffer_empty(buffer), "the broker to acknowledge every message")


async def test_wrong_password_is_logged_once_and_retried_without_crashing(
        broker_factory: BrokerFactory, buffer: Buffer, caplog: pytest.LogCaptureFixture) -> None:
    broker = broker_factory(users={"gateway": "s3cret"})
    wrong = settings(broker.port, username="gateway", password=SecretStr("guess"),
                     reconnect=ReconnectSettings(initial_delay=0.05, max_delay=0.1, refused_delay=0.1))
    publisher = Publisher(wrong, GATEWAY, buffer, STATUS)
    with caplog.at_level(logging.DEBUG, logger="gateway.publisher"):
        async with running(publisher) as task:
            await eventually(lambda: publisher.stats.connect_failures >= 3, "several refused attempts")
            assert not task.done() and not publisher.connected
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1, errors
    assert "refused" in errors[0] and "authori" in errors[0].lower() and "username" in errors[0]
    assert "guess" not in caplog.text


async def test_tls_with_ca_verification(broker_factory: BrokerFactory, tls_files: TlsFiles,
                                        mqtt_subscriber: SubscriberFactory, buffer: Buffer) -> None:
    broker = broker_factory(tls=tls_files.server, ca=tls_files.ca)
    subscriber = await mqtt_subscriber(broker, TOPIC)  # on the plain listener
    assert broker.tls_port is not None
    tls = TlsSettings(ca_file=tls_files.ca)
    publisher = Publisher(settings(broker.tls_port, tls=tls), GATEWAY, buffer, STATUS)
    async with running(publisher):
        await commit(buffer, range(1, 4))
        received = await subscriber.wait_count(3, TOPIC)
    assert seqs(received) == [1, 2, 3]


@pytest.mark.filterwarnings("error::ResourceWarning")  # a socket left open by a failed handshake
async def test_tls_rejects_a_certificate_for_another_host_unless_told_not_to_check(
        broker_factory: BrokerFactory, tls_files: TlsFiles, buffer: Buffer,
        caplog: pytest.LogCaptureFixture) -> None:
    broker = broker_factory(tls=tls_files.wrong_name, ca=tls_files.ca)
    assert broker.tls_port is not None
    checking = Publisher(settings(broker.tls_port, tls=TlsSettings(ca_file=tls_files.ca)), GATEWAY, buffer, STATUS)
    with caplog.at_level(logging.WARNING, logger="gateway.publisher"):
        async with running(checking):
            await eventually(lambda: checking.stats.connect_failures >= 2, "refused TLS handshakes")
            assert not checking.connected
    assert "the broker's certificate is not for this host name" in caplog.text
    assert "mqtt.tls.verify_hostname" in caplog.text, "the message names the setting that decides"
    gc.collect()  # finalise now any socket the failed attempts left unclosed, so the warning lands here

    lenient = TlsSettings(ca_file=tls_files.ca, verify_hostname=False)
    trusting = Publisher(settings(broker.tls_port, tls=lenient), GATEWAY, buffer, STATUS)
    async with running(trusting):
        await connected(trusting)


async def test_mutual_tls_with_an_encrypted_client_key(broker_factory: BrokerFactory, tls_files: TlsFiles,
                                                       buffer: Buffer) -> None:
    broker = broker_factory(tls=tls_files.server, ca=tls_files.ca, require_client_cert=True)
    assert broker.tls_port is not None
    tls = TlsSettings(ca_file=tls_files.ca, cert_file=tls_files.client.cert, key_file=tls_files.client.key,
                      key_password=SecretStr(tls_files.client_key_password))
    publisher = Publisher(settings(broker.tls_port, tls=tls), GATEWAY, buffer, STATUS)
    async with running(publisher):
        await commit(buffer, range(1, 4))
        await eventually(lambda: buffer_empty(buffer), "the broker to acknowledge every message")


async def test_a_broker_signed_by_another_ca_and_a_refused_client_certificate_are_told_in_settings(
        broker_factory: BrokerFactory, tls_files: TlsFiles, buffer: Buffer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    broker = broker_factory(tls=tls_files.server, ca=tls_files.ca, require_client_cert=True)
    assert broker.tls_port is not None
    # Trusting only our own client certificate (a CA that did not sign the broker's).
    other_ca = TlsSettings(ca_file=tls_files.client.cert)
    untrusting = Publisher(settings(broker.tls_port, tls=other_ca), GATEWAY, buffer, STATUS)
    with caplog.at_level(logging.WARNING, logger="gateway.publisher"):
        async with running(untrusting):
            await eventually(lambda: untrusting.stats.connect_failures >= 1, "a refused handshake")
    assert f"the broker's certificate is not trusted by mqtt.tls.ca_file {tls_files.client.cert}" in caplog.text
    caplog.clear()
    # The right CA, no client certificate: the broker requires one.
    anonymous = Publisher(settings(broker.tls_port, tls=TlsSettings(ca_file=tls_files.ca)), GATEWAY, buffer, STATUS)
    with caplog.at_level(logging.WARNING, logger="gateway.publisher"):
        async with running(anonymous):
            await eventually(lambda: anonymous.stats.connect_failures >= 1, "a refused client")
    assert "client certificate" in caplog.text and "mqtt.tls.cert_file" in caplog.text
    gc.collect()


async def test_cancelling_while_the_broker_is_unreachable_stops_promptly(buffer: Buffer) -> None:
    publisher = Publisher(settings(free_port()), GATEWAY, buffer, STATUS)
    async with running(publisher):
        await eventually(lambda: publisher.stats.connect_failures >= 1, "a failed attempt")


async def test_after_a_healthy_connection_drops_it_retries_at_once_then_every_second_at_most(
        broker_factory: BrokerFactory, buffer: Buffer, caplog: pytest.LogCaptureFixture) -> None:
    # The default settings: a broker back after an outage of any length is reached within about 1 s.
    broker = broker_factory()
    publisher = Publisher(settings(broker.port, reconnect=ReconnectSettings()), GATEWAY, buffer, STATUS)
    with caplog.at_level(logging.DEBUG, logger="gateway.publisher"):
        async with running(publisher):
            await connected(publisher)
            broker.stop()
            await eventually(lambda: publisher.stats.connect_failures >= 4, "several failed attempts")
            broker.start()
            await connected(publisher)
    delays = [float(r.getMessage().rsplit(" in ", 1)[1].removesuffix(" s")) for r in caplog.records
              if r.getMessage().startswith("Reconnecting")]
    assert delays[0] <= 0.25, "the first attempt after a healthy connection comes at once"
    assert max(delays) <= 1.0 and max(delays) > delays[0], "then the wait grows, but never past 1 s"
