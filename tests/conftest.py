"""Shared fixtures. Real servers on 127.0.0.1 only; see tests/brokers.py for the MQTT helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import Broker, Subscriber, TlsFiles, make_tls_files, mosquitto_available

BrokerFactory = Callable[..., Broker]
SubscriberFactory = Callable[..., Awaitable[Subscriber]]


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    """`broker_factory(**options)` -> a started `Broker` (options as `Broker`: users, tls, ca,
    require_client_cert, persistence; `start=False` to leave it stopped). All are stopped at teardown."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    brokers: list[Broker] = []

    def make(*, start: bool = True, **options: Any) -> Broker:
        broker = Broker(tmp_path / f"broker-{len(brokers)}", **options)
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> Broker:
    """A running mosquitto accepting anonymous plain MQTT on `broker.port`."""
    return broker_factory()


@pytest.fixture
async def mqtt_subscriber() -> AsyncIterator[SubscriberFactory]:
    """`await mqtt_subscriber(broker, "topic/#", ..., clean_session=True, client_id=None)` -> a `Subscriber`
    already subscribed (QoS 1) and recording; all are closed at teardown."""
    subscribers: list[Subscriber] = []

    async def make(broker: Broker, *topics: str, clean_session: bool = True,
                   client_id: str | None = None) -> Subscriber:
        subscriber = Subscriber(broker.port, list(topics) or ["#"], clean_session=clean_session,
                                client_id=client_id)
        subscribers.append(subscriber)
        await subscriber.start()
        return subscriber

    yield make
    for subscriber in subscribers:
        subscriber.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test CA with server certificates (right and wrong host name) and a client certificate."""
    pytest.importorskip("cryptography")
    return make_tls_files(tmp_path_factory.mktemp("tls"))
