"""Shared fixtures. Real servers on 127.0.0.1 only; see tests/brokers.py for the MQTT helpers.

Every test is watched for leaks: a task still running when its fixtures are torn down, or a thread still
alive after the test, fails the test (either one would be a part that does not stop when it is told to).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from drivers.modbus.tables import Table
from simulators.modbus import ModbusSimulator
from tests.brokers import Broker, Subscriber, TlsFiles, make_tls_files, mosquitto_available

BrokerFactory = Callable[..., Broker]
# A part that was stopped may take this long to end (a thread joining, a task finishing its cancellation).
_ENDING = 5.0


_THREADS_BEFORE = pytest.StashKey[set[threading.Thread]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    item.stash[_THREADS_BEFORE] = set(threading.enumerate())
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """After every fixture of the test is torn down (its event loop closed too): no thread of its may be left."""
    result = yield
    before = item.stash.get(_THREADS_BEFORE, set())
    deadline = time.monotonic() + _ENDING
    for thread in [t for t in threading.enumerate() if t not in before]:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    leaked = [t for t in threading.enumerate() if t not in before]
    assert not leaked, f"threads still running after the test: {[t.name for t in leaked]}\n" + _stacks(leaked)
    return result


def _stacks(threads: list[threading.Thread]) -> str:
    frames = sys._current_frames()
    return "\n".join(f"{t.name}:\n" + "".join(traceback.format_stack(frames[t.ident]))
                     for t in threads if t.ident in frames)


@pytest_asyncio.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    yield
    current = asyncio.current_task()
    running = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if running:
        await asyncio.wait(running, timeout=_ENDING)
    leaked = [f"{t.get_name()} ({t.get_coro().__qualname__})" for t in running if not t.done()]
    assert not leaked, f"tasks still running after the test and its fixtures: {leaked}"
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


@pytest.fixture
async def plc() -> AsyncIterator[ModbusSimulator]:
    """A simulated PLC, Modbus unit 1, whose holding register 0 holds 412 (4.12 bar of outlet pressure)."""
    simulator = ModbusSimulator([1])
    await simulator.start()
    simulator.set_registers(1, Table.HOLDING_REGISTER, 0, [412])
    yield simulator
    await simulator.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test CA with server certificates (right and wrong host name) and a client certificate."""
    pytest.importorskip("cryptography")
    return make_tls_files(tmp_path_factory.mktemp("tls"))
