"""OPC-UA writes against a real asyncua server: the node's own DataType, read-back, and the server's refusals,
through the link's request task of a subscription-only link."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.opcua.client import writable_value
from drivers.opcua.config import OpcUaDevice
from drivers.opcua.driver import OpcUaDriver
from gateway.links import LinkRunner
from gateway.model.driver import DriverError, WriteRefused
from simulators.opcua import STATION_NAMESPACE, StationSimulator, gas_station_variables, setpoint_variables
from tests.brokers import eventually, free_port

ASSET = {"domain": "gas", "site": "north", "id": "prs-1", "type": "gas-regulating-station"}


def node(name: str) -> str:
    return f"nsu={STATION_NAMESPACE};s={name}"


@pytest.fixture
async def station() -> AsyncIterator[StationSimulator]:
    simulator = StationSimulator(free_port(), variables=[*gas_station_variables(), *setpoint_variables()], period=0)
    await simulator.start()
    yield simulator
    await simulator.stop()


def make_device(port: int, mode: str = "subscription") -> OpcUaDevice:
    return OpcUaDevice.model_validate({
        "id": "prs-1-plc", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{port}/station", "asset": ASSET,
        "mode": mode, "publishing_interval": 0.1, "keepalive": 0.5, "timeout": 2.0,
        "points": [
            {"name": "setpoint", "indicator": "outlet-pressure-setpoint",
             "node": node("Station.OutletPressureSetpoint"), "writable": True},
            {"name": "mode", "indicator": "regulator-mode", "node": node("Station.RegulatorMode"),
             "writable": True},
            {"name": "outlet", "indicator": "outlet-pressure", "node": node("Station.OutletPressure"),
             "writable": True},
            {"name": "inlet", "indicator": "inlet-pressure", "node": node("Station.InletPressure")},
        ]})


def variable(station: StationSimulator, name: str) -> Any:
    return next(v for v in station.variables if v.name == name)


async def test_writes_use_the_nodes_type_read_back_and_never_overlap_the_subscription(
        station: StationSimulator) -> None:
    device = make_device(station.port)
    driver = OpcUaDriver([device])
    runner: LinkRunner[OpcUaDevice] = LinkRunner("opcua", driver, lambda *a: None, lambda *a: None, lambda s: None)
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: runner._open, "the session")
        assert await runner.write(device, "setpoint", 3.25) == 3.25
        assert variable(station, "Station.OutletPressureSetpoint").value == 3.25
        assert await runner.write(device, "mode", 2) == 2  # an Int16 node: written as Int16, not as a Double
        assert variable(station, "Station.RegulatorMode").value == 2
        with pytest.raises(WriteRefused, match="BadOutOfRange") as refused:
            await runner.write(device, "setpoint", 9.0)
        assert refused.value.reason == "out-of-range"
        with pytest.raises(WriteRefused, match="BadNotWritable") as refused:
            await runner.write(device, "outlet", 1.0)
        assert refused.value.reason == "not-writable"
        with pytest.raises(WriteRefused, match="not a whole number") as refused:
            await runner.write(device, "mode", 1.5)
        assert refused.value.reason == "not-representable"
        with pytest.raises(WriteRefused, match="not declared writable"):
            await runner.write(device, "inlet", 1.0)
        assert variable(station, "Station.OutletPressureSetpoint").writes == 1
        assert variable(station, "Station.RegulatorMode").writes == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_write_to_a_link_that_is_down_fails_at_once() -> None:
    device = make_device(free_port(), mode="polling")
    runner: LinkRunner[OpcUaDevice] = LinkRunner("opcua", OpcUaDriver([device]), lambda *a: None,
                                                 lambda *a: None, lambda s: None)
    with pytest.raises(DriverError) as failure:
        await runner.write(device, "setpoint", 3.0)
    assert failure.value.reason == "link-down"


@pytest.mark.parametrize(("value", "kind", "expected"), [
    (True, "Boolean", True), (1, "Boolean", True), (3.0, "Int16", 3), (70000, "UInt16", None), (-1, "UInt32", None),
    (2.5, "Int32", None), (1e39, "Float", None), (1.5, "Double", 1.5), ("on", "Double", None), ("x", "String", "x"),
])
def test_values_are_made_the_nodes_type_or_refused(value: Any, kind: str, expected: Any) -> None:
    from asyncua import ua  # the test may import the library the adapter wraps

    variant = ua.VariantType[kind]
    if expected is None:
        with pytest.raises(ValueError):
            writable_value(value, variant)
    else:
        assert writable_value(value, variant) == expected and type(writable_value(value, variant)) is type(expected)
