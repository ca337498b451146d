"""The OPC-UA driver against real asyncua servers on 127.0.0.1 (in-process, or a subprocess to restart)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from drivers.opcua.browse import browse
from drivers.opcua.client import ConnectOptions, OpcUaLink
from drivers.opcua.config import NodeRef, OpcUaDevice
from drivers.opcua.driver import OpcUaDriver
from gateway.links import LinkRunner
from gateway.model.devices import DeviceBase
from gateway.model.driver import DriverError, LinkContext, WriteRefused
from gateway.model.readings import Quality, Sample, now_ms
from simulators.opcua import (
    STATION_NAMESPACE,
    SimVariable,
    StationSimulator,
    gas_station_variables,
    make_server_certificate,
)
from tests.brokers import WAIT, eventually, free_port

ROOT = Path(__file__).resolve().parent.parent
ASSET = {"domain": "gas", "site": "north", "id": "prs-1", "type": "gas-regulating-station"}
POINTS = [
    ("inlet", "inlet-pressure", "Station.InletPressure"),
    ("outlet", "outlet-pressure", "Station.OutletPressure"),
    ("temperature", "gas-temperature", "Station.GasTemperature"),
    ("flow", "gas-standard-flow", "Station.StandardFlow"),
    ("volume", "gas-standard-volume", "Station.StandardVolume"),
    ("slam-shut", "slam-shut-valve-closed", "Station.SlamShutClosed"),
]


def node(name: str) -> str:
    return f"nsu={STATION_NAMESPACE};s={name}"


def make_device(port: int, **overrides: Any) -> OpcUaDevice:
    raw: dict[str, Any] = {
        "id": "prs-1-plc", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{port}/station", "asset": ASSET,
        "publishing_interval": 0.1, "keepalive": 0.5, "timeout": 2.0,
        "points": [{"name": n, "indicator": i, "node": node(s)} for n, i, s in POINTS],
    }
    raw.update(overrides)
    return OpcUaDevice.model_validate(raw)


def write_site(directory: Path, device: dict[str, Any], broker_port: int) -> Path:
    """A gateway configuration with this one device, the shipped catalogue and the broker on 127.0.0.1."""
    (directory / "devices.yaml").write_text(yaml.safe_dump({"devices": [device]}, allow_unicode=True))
    (directory / "gateway.yaml").write_text(yaml.safe_dump({
        "gateway": {"id": "test-gw", "state_dir": str(directory / "state")},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "reconnect": {"initial_delay": 0.1, "max_delay": 0.5}},
        "buffer": {"synchronous": "normal"},
        "catalogue": str(ROOT / "config" / "catalogue.yaml"), "include": ["devices.yaml"]}))
    return directory / "gateway.yaml"


class Collector:
    """A sample sink that remembers everything, newest last."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def __call__(self, device: DeviceBase, samples: Sequence[Sample]) -> None:
        self.samples.extend(samples)

    def latest(self, point: str) -> Sample | None:
        return next((s for s in reversed(self.samples) if s.point == point), None)

    def has(self, point: str, value: object) -> bool:
        latest = self.latest(point)
        return latest is not None and latest.value == value


@pytest.fixture
async def station() -> AsyncIterator[StationSimulator]:
    simulator = StationSimulator(free_port(), period=0, decoy_namespaces=2)
    await simulator.start()
    yield simulator
    await simulator.stop()


@asynccontextmanager
async def running_station(**options: Any) -> AsyncIterator[StationSimulator]:
    simulator = StationSimulator(free_port(), **{"period": 0, **options})
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@asynccontextmanager
async def listening(driver: OpcUaDriver, sink: Collector) -> AsyncIterator[asyncio.Task[None]]:
    """The driver's push listener running (its subscriptions made) until the block is left."""
    task = asyncio.create_task(driver.run(sink))
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def acquire(driver: OpcUaDriver, device: OpcUaDevice, sink: Collector, names: Sequence[str]) -> None:
    """Every named point's first sample into `sink`: from the subscription, or from one Read."""
    if not device.pushes:
        sink(device, await driver.read(device))
        return
    async with listening(driver, sink):
        await eventually(lambda: all(sink.latest(name) for name in names), "a sample of every point")


@pytest.fixture
async def driver_factory(tmp_path: Path) -> AsyncIterator[Any]:
    drivers: list[OpcUaDriver] = []

    def make(*devices: OpcUaDevice) -> OpcUaDriver:
        driver = OpcUaDriver(list(devices), LinkContext(state_dir=tmp_path / "state"))
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        await driver.close()


# -- acquisition --------------------------------------------------------------------------------------------

async def test_subscription_delivers_changes_with_the_server_source_timestamp(
        station: StationSimulator, driver_factory: Any) -> None:
    device = make_device(station.port)
    driver = driver_factory(device)
    sink = Collector()
    await driver.open()
    async with listening(driver, sink):
        await eventually(lambda: sink.has("inlet", 350.0) and sink.has("slam-shut", False), "initial values")
        before = now_ms()
        await station.set_value("Station.InletPressure", 412.5)
        await station.set_value("Station.SlamShutClosed", True)
        await eventually(lambda: sink.has("inlet", 412.5) and sink.has("slam-shut", True), "changed values")
        inlet = sink.latest("inlet")
        assert inlet is not None and inlet.quality is Quality.GOOD and inlet.reason is None
        assert inlet.source_time_ms is not None and before - 50 <= inlet.source_time_ms <= now_ms()
        assert station.monitored_items() == len(POINTS)
        # A subscription device can still be read once (what `municipal-gateway read` does).
        assert {s.point: s.value for s in await driver.read(device)}["inlet"] == 412.5


async def test_polling_reads_every_point_split_by_max_nodes_per_read(driver_factory: Any) -> None:
    # The simulator refuses Reads of more nodes than it announces, like a strict server.
    station = StationSimulator(free_port(), period=0, max_nodes_per_read=4)
    await station.start()
    try:
        await station.set_value("Station.OutletPressure", 2.75)
        device = make_device(station.port, mode="polling")
        driver = driver_factory(device)
        await driver.open()
        calls = station.read_calls
        samples = {s.point: s for s in await driver.read(device)}
        assert station.read_calls - calls == 2  # 6 nodes, at most 4 per call
        assert driver.counters(device)["reads"] == 2
        assert [samples[n].value for n, _, _ in POINTS] == [350.0, 2.75, 12.5, 820.0, 1_254_300.0, False]
        assert all(s.quality is Quality.GOOD for s in samples.values())
        assert station.monitored_items() == 0
        await driver.close()
    finally:
        await station.stop()


async def test_status_codes_become_quality_with_the_status_name_as_reason(
        station: StationSimulator, driver_factory: Any) -> None:
    device = make_device(station.port, mode="polling")
    driver = driver_factory(device)
    await driver.open()
    await station.set_value("Station.GasTemperature", 12.5, status=0x40000000)  # Uncertain
    await station.set_value("Station.StandardFlow", 0.0, status=0x808C0000)  # BadSensorFailure
    samples = {s.point: s for s in await driver.read(device)}
    assert (samples["temperature"].quality, samples["temperature"].reason) == (Quality.UNCERTAIN, "Uncertain")
    assert samples["temperature"].value == 12.5
    assert (samples["flow"].quality, samples["flow"].reason, samples["flow"].value) == \
        (Quality.BAD, "BadSensorFailure", None)
    assert samples["inlet"].quality is Quality.GOOD
    assert driver.counters(device) == {
        "reads": 1, "notifications": 0, "decode_errors": 0, "bad_statuses": 1, "uncertain_statuses": 1}


@pytest.mark.parametrize("mode", ["subscription", "polling"])
async def test_an_unknown_node_is_bad_with_its_status_name_and_the_others_work(
        station: StationSimulator, driver_factory: Any, mode: str) -> None:
    points = [{"name": "inlet", "indicator": "inlet-pressure", "node": node("Station.InletPressure")},
              {"name": "ghost", "indicator": "outlet-pressure", "node": node("Station.NoSuchThing")},
              {"name": "elsewhere", "indicator": "gas-temperature", "node": "nsu=urn:nobody:here;s=X"},
              {"name": "by-path", "indicator": "methane-lel", "browse_path": "Station/MethaneLel"},
              {"name": "by-guid", "indicator": "gas-standard-flow",
               "node": f"nsu={STATION_NAMESPACE};g=09087e75-8e5e-499b-954f-f2a9603db28a"},
              {"name": "opaque", "indicator": "gas-standard-volume", "node": f"nsu={STATION_NAMESPACE};b=AQID"}]
    device = make_device(station.port, mode=mode, points=points, namespace=STATION_NAMESPACE)
    driver = driver_factory(device)
    sink = Collector()
    await driver.open()
    await acquire(driver, device, sink, [p["name"] for p in points])
    for name in ("ghost", "elsewhere", "by-guid", "opaque"):
        sample = sink.latest(name)
        assert sample is not None and (sample.quality, sample.reason) == (Quality.BAD, "BadNodeIdUnknown"), name
    assert sink.has("inlet", 350.0) and sink.has("by-path", 0.0)


@pytest.mark.parametrize("mode", ["subscription", "polling"])
async def test_a_good_status_with_a_null_value_is_a_bad_sample_and_a_decode_error(
        driver_factory: Any, mode: str) -> None:
    # A variable the PLC program has never written: status Good, but a null Variant and so no value.
    variables = [*gas_station_variables(), SimVariable("Station.Spare", None)]
    async with running_station(variables=variables) as station:
        points = [{"name": "inlet", "indicator": "inlet-pressure", "node": node("Station.InletPressure")},
                  {"name": "spare", "indicator": "outlet-pressure", "node": node("Station.Spare")}]
        device = make_device(station.port, mode=mode, points=points)
        driver = driver_factory(device)
        sink = Collector()
        await driver.open()
        await acquire(driver, device, sink, ["spare", "inlet"])
        spare = sink.latest("spare")
        assert spare is not None and (spare.value, spare.quality, spare.reason) == (None, Quality.BAD, "decode-error")
        assert sink.has("inlet", 350.0)
        assert driver.counters(device)["decode_errors"] == 1


async def test_the_push_listener_ends_with_a_driver_error_when_keep_alive_finds_the_server_gone(
        station: StationSimulator, driver_factory: Any) -> None:
    # Steady values send no notifications, and nothing repeats them here: that a value is still
    # current is processing's concern. The listener's only other job is to notice the server is gone.
    device = make_device(station.port, keepalive=0.5)
    driver = driver_factory(device)
    sink = Collector()
    await driver.open()
    async with listening(driver, sink) as listener:
        await eventually(lambda: all(sink.latest(n) for n, _, _ in POINTS), "the first notification")
        notified = len(sink.samples)
        await station.stop()
        with pytest.raises(DriverError):
            async with asyncio.timeout(WAIT):
                await listener
    assert len(sink.samples) == notified
    assert driver.counters(device)["notifications"] == len(POINTS)


async def test_node_ids_with_a_namespace_index_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="namespace URI"):
        NodeRef.parse("ns=3;s=Station.InletPressure")
    assert str(NodeRef.parse("i=2258")) == "i=2258"


@pytest.mark.parametrize("bad", ["g=not-a-uuid", "b=not base64!", "b=AQI", "i=4294967296"])
def test_malformed_node_identifiers_are_refused_by_the_configuration(bad: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        NodeRef.parse(f"nsu={STATION_NAMESPACE};{bad}")
    with pytest.raises(ValidationError, match="identifier"):
        make_device(4840, points=[{"name": "x", "indicator": "inlet-pressure", "node": f"nsu=urn:x;{bad}"}])
    NodeRef.parse("nsu=urn:x;g=09087e75-8e5e-499b-954f-f2a9603db28a")
    NodeRef.parse("nsu=urn:x;b=AQID")


# -- a misbehaving server -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["refuse", "hang-up", "mute"])
async def test_a_failure_while_resolving_is_a_driver_error_and_leaves_no_session_open(
        station: StationSimulator, driver_factory: Any, fault: str) -> None:
    points = [{"name": "inlet", "indicator": "inlet-pressure", "node": node("Station.InletPressure")},
              {"name": "by-path", "indicator": "methane-lel", "browse_path": "Station/MethaneLel"}]
    device = make_device(station.port, mode="polling", points=points, namespace=STATION_NAMESPACE, timeout=1.0)
    driver = driver_factory(device)
    station.translate_fault = fault
    with pytest.raises(DriverError) as caught:
        await driver.open()
    if fault == "refuse":
        assert caught.value.reason == "BadTooManyOperations"
    await eventually(lambda: station.connections() == 0, "the session to be closed")
    with pytest.raises(DriverError, match="not connected"):
        await driver.read(device)
    station.translate_fault = None  # the next attempt (the scheduler's retry) works
    await driver.open()
    assert [s.value for s in await driver.read(device)] == [350.0, 0.0]


async def test_a_connect_cancelled_midway_leaves_no_session_open(
        station: StationSimulator, driver_factory: Any) -> None:
    # What the scheduler's stuck-poll guard does to a connect that hangs: cancel it.
    device = make_device(station.port, mode="polling", namespace=STATION_NAMESPACE, timeout=1.0, points=[
        {"name": "by-path", "indicator": "methane-lel", "browse_path": "Station/MethaneLel"}])
    driver = driver_factory(device)
    station.translate_fault = "mute"
    connecting = asyncio.create_task(driver.open())
    await eventually(lambda: station.translate_calls > 0, "the connect to be resolving nodes")
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    await eventually(lambda: station.connections() == 0, "the session to be closed")


async def test_a_read_answered_short_is_a_driver_error(station: StationSimulator, driver_factory: Any) -> None:
    device = make_device(station.port, mode="polling")
    driver = driver_factory(device)
    await driver.open()
    station.short_reads = True
    with pytest.raises(DriverError, match="5 results for 6"):
        await driver.read(device)


# -- security -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return asyncio.run(make_server_certificate(tmp_path_factory.mktemp("server-pki")))


@pytest.fixture
async def secured_station(server_pki: tuple[Path, Path]) -> AsyncIterator[StationSimulator]:
    certificate, key = server_pki
    simulator = StationSimulator(free_port(), period=0, users={"gateway": "s3cret"}, certificate=certificate,
                                 private_key=key)
    await simulator.start()
    yield simulator
    await simulator.stop()


def secured_device(station: StationSimulator, tmp_path: Path, password: str, server_certificate: Path,
                   policy: str = "Basic256Sha256", mode: str = "SignAndEncrypt") -> OpcUaDevice:
    secret = tmp_path / "password"
    secret.write_text(password + "\n")
    return make_device(station.port, mode="polling", username="gateway", password_file=str(secret),
                       security={"policy": policy, "mode": mode, "server_certificate": str(server_certificate)})


async def test_a_secured_endpoint_with_username_and_password_connects_with_a_generated_certificate(
        secured_station: StationSimulator, server_pki: tuple[Path, Path], tmp_path: Path,
        driver_factory: Any) -> None:
    device = secured_device(secured_station, tmp_path, "s3cret", server_pki[0])
    driver = driver_factory(device)
    await driver.open()
    samples = await driver.read(device)
    assert [s.value for s in samples][:2] == [350.0, 2.6]
    key = tmp_path / "state" / "opcua" / "client-key.pem"
    assert (tmp_path / "state" / "opcua" / "client-cert.der").is_file()
    assert key.stat().st_mode & 0o077 == 0


async def test_a_node_the_signed_in_user_may_not_write_is_refused_as_access_denied(
        server_pki: tuple[Path, Path], tmp_path: Path, driver_factory: Any) -> None:
    """The server lets an operator's session write one setpoint and not the other (its UserAccessLevel)."""
    certificate, key = server_pki
    station = StationSimulator(free_port(), period=0, users={"gateway": "s3cret"}, certificate=certificate,
                               private_key=key, variables=[
                                   SimVariable("Station.Setpoint", 2.6, writable=True),
                                   SimVariable("Station.LockedSetpoint", 4.0, writable=True, user_writable=False)])
    await station.start()
    try:
        secret = tmp_path / "password"
        secret.write_text("s3cret\n")
        device = make_device(station.port, mode="polling", username="gateway", password_file=str(secret),
                             security={"policy": "Basic256Sha256", "mode": "SignAndEncrypt",
                                       "server_certificate": str(certificate)},
                             points=[{"name": name, "indicator": "outlet-pressure-setpoint",
                                      "node": node(f"Station.{name}"), "writable": True}
                                     for name in ("Setpoint", "LockedSetpoint")])
        driver = driver_factory(device)
        await driver.open()
        assert await driver.write(device, "Setpoint", 3.0) == 3.0
        with pytest.raises(WriteRefused, match="BadUserAccessDenied") as refused:
            await driver.write(device, "LockedSetpoint", 3.0)
        assert refused.value.reason == "access-denied"
        assert next(v for v in station.variables if v.name == "Station.LockedSetpoint").value == 4.0
    finally:
        await station.stop()


async def test_the_aes_policy_works_too(secured_station: StationSimulator, server_pki: tuple[Path, Path],
                                        tmp_path: Path, driver_factory: Any) -> None:
    device = secured_device(secured_station, tmp_path, "s3cret", server_pki[0], policy="Aes256_Sha256_RsaPss")
    driver = driver_factory(device)
    await driver.open()
    assert (await driver.read(device))[0].value == 350.0


async def test_a_wrong_password_is_a_clear_error_and_no_data(
        secured_station: StationSimulator, server_pki: tuple[Path, Path], tmp_path: Path,
        driver_factory: Any) -> None:
    device = secured_device(secured_station, tmp_path, "guess", server_pki[0])
    driver = driver_factory(device)
    with pytest.raises(DriverError, match="wrong username or password") as caught:
        await driver.open()
    assert caught.value.reason == "BadUserAccessDenied"
    with pytest.raises(DriverError):
        await driver.read(device)


async def test_an_untrusted_server_certificate_is_refused_and_saved_for_review(
        secured_station: StationSimulator, server_pki: tuple[Path, Path], tmp_path: Path,
        driver_factory: Any) -> None:
    other, _ = await make_server_certificate(tmp_path / "other-server")
    device = secured_device(secured_station, tmp_path, "s3cret", other)
    driver = driver_factory(device)
    with pytest.raises(DriverError, match="not trusted") as caught:
        await driver.open()
    assert caught.value.reason == "BadCertificateUntrusted"
    rejected = list((tmp_path / "state" / "opcua" / "rejected").iterdir())
    assert len(rejected) == 1 and rejected[0].read_bytes() == server_pki[0].read_bytes()


async def test_a_malformed_server_certificate_is_a_clear_error(
        secured_station: StationSimulator, server_pki: tuple[Path, Path], tmp_path: Path,
        driver_factory: Any) -> None:
    secured_station.advertise_certificate(b"\x30\x82\x00\x20" + b"not a certificate at all")
    device = secured_device(secured_station, tmp_path, "s3cret", server_pki[0])
    driver = driver_factory(device)
    with pytest.raises(DriverError, match=r"not a valid X\.509 certificate") as caught:
        await driver.open()
    assert caught.value.reason == "BadCertificateInvalid"
    await eventually(lambda: secured_station.connections() == 0, "no connection left open")


async def test_a_policy_the_endpoint_does_not_offer_lists_what_it_offers(
        secured_station: StationSimulator, server_pki: tuple[Path, Path], tmp_path: Path,
        driver_factory: Any) -> None:
    device = secured_device(secured_station, tmp_path, "s3cret", server_pki[0], policy="Aes128_Sha256_RsaOaep",
                            mode="Sign")
    driver = driver_factory(device)
    with pytest.raises(DriverError, match=r"offers: .*Basic256Sha256/SignAndEncrypt") as caught:
        await driver.open()
    assert caught.value.reason == "BadSecurityPolicyRejected"


# -- restart: a new server process ----------------------------------------------------------------------------

class ServerProcess:
    def __init__(self, port: int, decoy: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simulators.opcua", "--port", str(port), "--period", "0.2",
             "--decoy", str(decoy)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})

    async def ready(self) -> float:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), 20)
        assert line.startswith(b"ready"), line
        return time.monotonic()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        if process.process.poll() is None:
            process.kill()


async def monitored_items_on(port: int) -> object:
    """What the server's diagnostics variable says (updated by the simulator every 0.2 s)."""
    options = ConnectOptions(f"opc.tcp://127.0.0.1:{port}/station", timeout=2, keepalive=1, session_timeout=10)
    link = await OpcUaLink.open(options)
    try:
        counter = link.node_id(NodeRef.parse(node("Diagnostics.MonitoredItems")))
        assert not isinstance(counter, str)
        return (await link.read([counter]))[0].value
    finally:
        await link.close()


async def test_a_restarted_server_is_back_within_seconds_without_duplicate_items(
        processes: list[ServerProcess], tmp_path: Path) -> None:
    port = free_port()
    processes.append(ServerProcess(port, decoy=0))
    await processes[0].ready()
    device = make_device(port)
    samples: list[tuple[float, Sample]] = []
    failures: list[tuple[float, str]] = []
    runner = LinkRunner(
        device.link_id(), OpcUaDriver([device], LinkContext(state_dir=tmp_path)),
        on_samples=lambda d, s, rx: samples.extend((time.monotonic(), x) for x in s),
        on_failure=lambda d, reason, rx: failures.append((time.monotonic(), reason)),
        on_status=lambda status: None)
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: any(s.point == "inlet" for _, s in samples), "first readings")
        await eventually(lambda: _equals(monitored_items_on(port), len(POINTS)), "items counted by the server")

        processes[0].kill()
        killed = time.monotonic()
        await eventually(lambda: bool(failures), "the loss to be noticed")
        assert failures[0][0] - killed < 5  # keep-alive noticed it in seconds

        # The new process registers two namespaces first: our namespace URI now has another index.
        processes.append(ServerProcess(port, decoy=2))
        back = await processes[1].ready()
        await eventually(lambda: any(t > back and s.point == "volume" and s.quality is Quality.GOOD
                                     for t, s in samples), "fresh readings from the new server")
        fresh = min(t for t, s in samples if t > back and s.quality is Quality.GOOD)
        assert fresh - back < 10
        assert runner.statuses[0].state.value == "online"
        await eventually(lambda: _equals(monitored_items_on(port), len(POINTS)), "no duplicated items")
        # Every failed reconnect attempt in the gap was reported, so bad readings cover it.
        assert all(reason for _, reason in failures) and len(failures) >= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _equals(value: Any, expected: object) -> bool:
    return bool(await value == expected)


# -- browse -------------------------------------------------------------------------------------------------

async def test_browse_output_validates_once_indicators_are_mapped(station: StationSimulator,
                                                                  tmp_path: Path) -> None:
    from gateway.config.loader import load_config

    options = ConnectOptions(f"opc.tcp://127.0.0.1:{station.port}/station", timeout=2, keepalive=1,
                             session_timeout=10)
    text = await browse(options, None, 3, device_id="prs-1-plc")
    document = yaml.safe_load(text)
    points = document["devices"][0]["points"]
    by_node = {p["node"]: p for p in points}
    assert by_node[node("Station.InletPressure")]["unit"] == "kPa"
    assert "Station.InletPressure" in text and "Double" in text
    mapping = {node(s): i for _, i, s in POINTS}
    document["devices"][0]["points"] = [dict(p, indicator=mapping[p["node"]]) for p in points if p["node"] in mapping]
    document["devices"][0]["asset"] = ASSET
    (tmp_path / "devices.yaml").write_text(yaml.safe_dump(document))
    (tmp_path / "gateway.yaml").write_text(json.dumps({
        "gateway": {"id": "gw-1", "state_dir": str(tmp_path / "state")},
        "catalogue": str(ROOT / "config" / "catalogue.yaml"), "include": ["devices.yaml"]}))
    config = load_config(tmp_path / "gateway.yaml")
    assert [p.name for p in config.devices[0].points] == [p["name"] for p in document["devices"][0]["points"]]


# -- through the whole gateway --------------------------------------------------------------------------------

async def test_the_gateway_publishes_subscribed_values_and_reports_bad_quality_while_the_server_is_away(
        station: StationSimulator, broker: Any, mqtt_subscriber: Any, tmp_path: Path) -> None:
    from tests.e2e import readings, running

    site = write_site(tmp_path, make_device(station.port).model_dump(mode="json", exclude_none=True), broker.port)
    topic = "city/gas/north/prs-1/data"
    subscriber = await mqtt_subscriber(broker, topic)

    def latest(indicator: str) -> dict[str, Any] | None:
        return next((r for r in reversed(readings(subscriber.messages, topic)) if r["indicator"] == indicator), None)

    async with running(site):
        await subscriber.wait_for(lambda _: (latest("inlet-pressure") or {}).get("value") == 350.0, "inlet pressure")
        await station.set_value("Station.InletPressure", 361.25)
        await subscriber.wait_for(lambda _: (latest("inlet-pressure") or {}).get("value") == 361.25, "the change")
        reading = latest("inlet-pressure")
        assert reading is not None and reading["unit"] == "kPa" and reading["quality"] == "good"
        assert reading["device"] == "prs-1-plc" and reading["point"] == "inlet"
        await station.stop()
        await subscriber.wait_for(lambda _: (latest("inlet-pressure") or {}).get("quality") == "bad",
                                  "bad quality while the server is away")


# -- field tools: browse from the command line, unit checks at connect ----------------------------------------

async def municipal_gateway(*args: str) -> tuple[int, str, str]:
    """The command in its own process, while this test's event loop keeps serving the station."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "STATION_SECRET": "s3cret-value"})
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_browse_lists_variables_not_their_properties_and_gives_unit_and_range(
        station: StationSimulator, tmp_path: Path) -> None:
    code, out, err = await municipal_gateway("browse", f"127.0.0.1:{station.port}/station",
                                             "--state-dir", str(tmp_path))
    assert code == 0, err
    points = yaml.safe_load(out)["devices"][0]["points"]
    assert not [p for p in points if "EngineeringUnits" in p["node"] or "EURange" in p["node"]]
    inlet = next(p for p in points if p["node"] == node("Station.InletPressure"))
    assert (inlet["unit"], inlet["range"]) == ("kPa", [0, 1600])
    assert f'endpoint: "opc.tcp://127.0.0.1:{station.port}/station"' in out  # host:port got its scheme


@pytest.mark.parametrize(("node_option", "message"), [
    ("Station.InletPressure", "expected a node id like"),
    (f"nsu={STATION_NAMESPACE};s=No.Such.Node", "BadNodeIdUnknown"),
    ("nsu=urn:not-on-this-server;s=X", "does not know the namespace"),
])
async def test_a_bad_start_node_is_a_clear_usage_error(station: StationSimulator, tmp_path: Path,
                                                       node_option: str, message: str) -> None:
    code, out, err = await municipal_gateway("browse", f"opc.tcp://127.0.0.1:{station.port}/station",
                                             "--node", node_option, "--state-dir", str(tmp_path))
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err


async def test_an_endpoint_of_another_scheme_is_refused_with_what_is_expected(tmp_path: Path) -> None:
    code, _, err = await municipal_gateway("browse", "http://127.0.0.1:4840", "--state-dir", str(tmp_path))
    assert code == 2 and "expected opc.tcp://host:port[/path] (or host:port)" in err and "Traceback" not in err


def test_the_skeleton_names_where_the_password_comes_from_never_the_password() -> None:
    from drivers.opcua.browse import skeleton

    options = ConnectOptions("opc.tcp://plc:4840", timeout=1, keepalive=1, session_timeout=10, username="op",
                             password="s3cret-value")
    text = skeleton(options, [], "plc", None, 3, "password: ${STATION_SECRET}")
    assert "password: ${STATION_SECRET}" in text and "s3cret-value" not in text
    without = skeleton(options, [], "plc", None, 3)
    assert "s3cret-value" not in without and "# password: ${OPCUA_PASSWORD}" in without


async def test_a_point_declared_in_another_unit_than_the_servers_is_a_warning_at_connect(
        station: StationSimulator, driver_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    device = make_device(station.port, mode="polling", points=[
        {"name": "inlet", "indicator": "inlet-pressure", "node": node("Station.InletPressure"), "unit": "bar"},
        {"name": "outlet", "indicator": "outlet-pressure", "node": node("Station.OutletPressure"), "unit": "kPa"},
        {"name": "flow", "indicator": "gas-standard-flow", "node": node("Station.StandardFlow"), "unit": "m3/h"},
        {"name": "temperature", "indicator": "gas-temperature", "node": node("Station.GasTemperature"),
         "unit": "kPa"}])
    driver = driver_factory(device)
    with caplog.at_level("WARNING", logger="drivers.opcua.driver"):
        await driver.open()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("point inlet: the server gives kPa, the configuration says bar" in w and "set `unit: kPa`" in w
               for w in warnings), warnings
    assert any("point temperature: the server gives °C (temperature), the configuration says kPa" in w
               for w in warnings), warnings
    assert not any("point outlet" in w or "point flow" in w for w in warnings)


async def test_a_point_without_a_unit_is_checked_against_its_indicators_unit_in_the_catalogue(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server that gives a pressure in bar, read by a point that declares no unit: the value would be taken
    in the catalogue's kPa, 100 times too small. Only the gateway's configuration knows the indicator's unit."""
    from gateway.config.loader import load_config

    station = StationSimulator(free_port(), variables=[
        SimVariable("Station.InletPressure", 3.5, "BAR", "Inlet pressure"),
        SimVariable("Station.GasTemperature", 12.5, "CEL", "Gas temperature")], period=0)
    await station.start()
    device = make_device(station.port, mode="polling", points=[
        {"name": "inlet", "indicator": "inlet-pressure", "node": node("Station.InletPressure")},
        {"name": "temperature", "indicator": "gas-temperature", "node": node("Station.GasTemperature")}])
    config = load_config(write_site(tmp_path, device.model_dump(mode="json", exclude_none=True), 1883))
    resolved = config.device("prs-1-plc")
    assert resolved is not None
    driver = OpcUaDriver([resolved.config], config.link_context)
    try:
        with caplog.at_level("INFO", logger="drivers.opcua.driver"):
            await driver.open()
    finally:
        await driver.close()
        await station.stop()
    said = [r.getMessage() for r in caplog.records if r.name == "drivers.opcua.driver"]
    assert any("point inlet: the server gives bar, indicator inlet-pressure in the catalogue says kPa" in m
               and "set `unit: bar` on the point" in m for m in said), said
    assert not any("temperature" in m for m in said), said
    assert not any("declare no unit" in m for m in said), said


@pytest.mark.parametrize("mode", ["subscription", "polling"])
async def test_attributes_of_an_opcua_device_are_read_into_the_meta_in_either_mode(
        broker: Any, mqtt_subscriber: Any, tmp_path: Path, mode: str) -> None:
    from tests.e2e import running

    station = StationSimulator(free_port(), variables=[
        *gas_station_variables(), SimVariable("Station.Number", 17, None, "Station number"),
        SimVariable("Station.Code", "PRS-N1", None, "Station code")], period=0)
    await station.start()
    device = make_device(station.port, mode=mode).model_dump(mode="json", exclude_none=True)
    device["attributes"] = [{"name": "number", "attribute": "station-number", "node": node("Station.Number")},
                            {"name": "code", "attribute": "station-id", "node": node("Station.Code")}]
    device["attribute_interval"] = 0.3
    site = write_site(tmp_path, device, broker.port)
    meta = "city/gas/north/prs-1/meta"
    subscriber = await mqtt_subscriber(broker, meta, "city/gas/north/prs-1/data")

    def attributes() -> dict[str, Any]:
        metas = [m for m in subscriber.messages if m.topic == meta]
        return {a["id"]: a["value"] for a in json.loads(metas[-1].payload)["attributes"]} if metas else {}

    try:
        async with running(site):
            await subscriber.wait_for(lambda _: attributes() == {"station-number": 17, "station-id": "PRS-N1"},
                                      "the attributes in the meta")
            await station.set_value("Station.Code", "PRS-N2")
            await subscriber.wait_for(lambda _: attributes().get("station-id") == "PRS-N2", "the code read again")
    finally:
        await station.stop()
    data = [r for m in subscriber.messages if m.topic.endswith("/data") for r in json.loads(m.payload)["readings"]]
    assert data and not {r["point"] for r in data} & {"number", "code"}, "attributes are never readings"
