# asyncua annotates its structures with NewTypes (Int32, String, Boolean) and re-exports names implicitly;
# checking plain ints and strings against those finds nothing but noise, so these two codes are off here only.
# mypy: disable-error-code="arg-type, attr-defined"
"""A simulated OPC-UA gas pressure-regulating station (tests, demo and benchmark only).

`StationSimulator` is an asyncua server bound to 127.0.0.1 with a small realistic
address space whose values change on a timer. Run as its own process:

    python -m simulators.opcua --port 4840 [--period 1] [--extra 1000] [--secure DIR] [--user NAME:PASSWORD]
                               [--demo]

it prints one line `ready opc.tcp://127.0.0.1:PORT/station` when it accepts
connections, then serves until stopped (SIGTERM/SIGINT or end of stdin).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.ua.uaerrors import UaStatusCodeError
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.opcua.client import pack_unit_code

STATION_NAMESPACE = "urn:municipal-gateway:sim:gas-station"


@dataclass
class SimVariable:
    name: str  # browse name and string node id
    value: float | int | bool | str | None  # None: a variable the PLC has never written (a null Variant)
    unit_code: str | None = None  # UN/CEFACT
    display_name: str = ""
    drift: float = 0.0  # each tick adds up to ± this (numbers) or flips with this probability (booleans)
    eu_range: tuple[float, float] | None = None  # the EURange property
    writable: bool = False  # clients may write it (otherwise a write is refused with BadNotWritable)
    user_writable: bool = True  # False: a signed-in user may not (UserAccessLevel read-only: BadUserAccessDenied)
    write_range: tuple[float, float] | None = None  # a written value outside it: BadOutOfRange, as a PLC refuses
    variant: ua.VariantType | None = None  # its DataType, when not the one its value implies
    writes: int = 0  # writes the server accepted
    node: Any = None


def gas_station_variables() -> list[SimVariable]:
    """A gas pressure-regulating station as its PLC might expose it."""
    return [
        SimVariable("Station.InletPressure", 350.0, "KPA", "Inlet pressure", 2.0, (0.0, 1600.0)),
        SimVariable("Station.OutletPressure", 2.6, "KPA", "Outlet pressure", 0.02, (0.0, 10.0)),
        SimVariable("Station.GasTemperature", 12.5, "CEL", "Gas temperature", 0.1),
        SimVariable("Station.StandardFlow", 820.0, "MQH", "Standard flow", 15.0),
        SimVariable("Station.StandardVolume", 1_254_300.0, "MTQ", "Standard volume totaliser", 0.0),
        SimVariable("Station.SlamShutClosed", False, None, "Slam-shut valve closed", 0.0),
        SimVariable("Station.MethaneLel", 0.0, None, "Methane concentration (%LEL)", 0.0),
        SimVariable("Station.MethaneAlarm", False, None, "Methane alarm", 0.0),
    ]


def setpoint_variables() -> list[SimVariable]:
    """What a control room may change at the station: the outlet pressure setpoint and the regulator's mode."""
    return [
        SimVariable("Station.OutletPressureSetpoint", 2.6, "KPA", "Outlet pressure setpoint", 0.0, (0.0, 10.0),
                    writable=True, write_range=(0.5, 6.0)),
        SimVariable("Station.RegulatorMode", 1, None, "Regulator mode (0 off, 1 auto, 2 manual)", 0.0,
                    writable=True, write_range=(0, 2), variant=ua.VariantType.Int16),
    ]


@dataclass
class StationSimulator:
    """An asyncua server bound to 127.0.0.1 with a `Station` object whose variables change on a timer."""

    port: int
    variables: list[SimVariable] = field(default_factory=gas_station_variables)
    period: float = 1.0  # seconds between value changes; 0: values never change by themselves
    namespace: str = STATION_NAMESPACE
    users: dict[str, str] | None = None  # username → password; None: anonymous allowed
    certificate: Path | None = None  # with private_key: secured endpoints (Basic256Sha256 + Aes*), no None
    private_key: Path | None = None
    max_nodes_per_read: int = 0
    decoy_namespaces: int = 0  # registered before ours, to move our namespace index
    read_calls: int = 0
    # Faults of a misbehaving server, for tests: answer Reads one result short; on TranslateBrowsePaths, refuse
    # the service ("refuse"), drop every client connection ("hang-up") or never answer anything again ("mute").
    short_reads: bool = False
    translate_fault: str | None = None
    translate_calls: int = 0
    _server: Server | None = None
    _ticker: asyncio.Task[None] | None = None
    _total: Any = None

    async def start(self) -> None:
        server = Server(user_manager=_SimUsers(self.users) if self.users is not None else None)
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/station")
        server.set_server_name("municipal-gateway simulated station")
        if self.certificate is not None and self.private_key is not None:
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
            server.set_security_policy([
                ua.SecurityPolicyType.Basic256Sha256_Sign, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
                ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt])
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if self.users is not None:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        for index in range(self.decoy_namespaces):
            await server.register_namespace(f"urn:municipal-gateway:sim:decoy-{index}")
        ns = await server.register_namespace(self.namespace)
        station = await server.nodes.objects.add_object(ua.NodeId("Station", ns), ua.QualifiedName("Station", ns))
        for variable in self.variables:
            variable.node = await station.add_variable(
                ua.NodeId(variable.name, ns), ua.QualifiedName(variable.name.rpartition(".")[2], ns), variable.value,
                varianttype=variable.variant)
            if variable.writable:
                await variable.node.set_writable()
            if variable.writable and not variable.user_writable:
                await variable.node.write_attribute(ua.AttributeIds.UserAccessLevel, ua.DataValue(ua.Variant(
                    ua.AccessLevel.CurrentRead.mask, ua.VariantType.Byte)))
            if variable.display_name:
                await variable.node.write_attribute(
                    ua.AttributeIds.DisplayName, ua.DataValue(ua.Variant(ua.LocalizedText(variable.display_name))))
            # Properties with node ids in the station's namespace, as real servers give them.
            if variable.unit_code is not None:
                info = ua.EUInformation(NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
                                        UnitId=pack_unit_code(variable.unit_code),
                                        DisplayName=ua.LocalizedText(variable.unit_code))
                await variable.node.add_property(ua.NodeId(f"{variable.name}.EngineeringUnits", ns),
                                                 ua.QualifiedName("EngineeringUnits", 0), info)
            if variable.eu_range is not None:
                low, high = variable.eu_range
                await variable.node.add_property(ua.NodeId(f"{variable.name}.EURange", ns),
                                                 ua.QualifiedName("EURange", 0), ua.Range(Low=low, High=high))
        self._count_reads(server)
        self._check_writes(server, ns)
        self._break_translate(server)
        if self.max_nodes_per_read:
            await server.write_attribute_value(
                ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead),
                ua.DataValue(ua.Variant(self.max_nodes_per_read, ua.VariantType.UInt32)))
        self._total = await station.add_variable(ua.NodeId("Diagnostics.MonitoredItems", ns),
                                                 ua.QualifiedName("MonitoredItems", ns), 0)
        self._server = server
        await server.start()
        if self.period > 0:
            self._ticker = asyncio.create_task(self._tick_forever())

    def _count_reads(self, server: Server) -> None:
        """Count Read calls and refuse those over MaxNodesPerRead, as a strict real server does."""
        service = server.iserver.attribute_service
        plain_read = service.read

        def read(params: ua.ReadParameters) -> list[ua.DataValue]:
            self.read_calls += 1
            if self.max_nodes_per_read and len(params.NodesToRead) > self.max_nodes_per_read:
                raise UaStatusCodeError(ua.StatusCodes.BadTooManyOperations)  # type: ignore[no-untyped-call]
            results = plain_read(params)
            return results[:-1] if self.short_reads else results

        service.read = read  # type: ignore[method-assign]

    def _check_writes(self, server: Server, ns: int) -> None:
        """Refuse writes as a PLC does: BadNotWritable to a variable that is not writable, BadOutOfRange outside
        a variable's write range; count the writes that went through."""
        service = server.iserver.attribute_service
        plain_write = service.write
        by_node = {ua.NodeId(v.name, ns): v for v in self.variables}

        async def write(params: ua.WriteParameters, user: Any = None) -> list[ua.StatusCode]:
            verdicts: list[ua.StatusCode | None] = []
            for item in params.NodesToWrite:
                variable = by_node.get(item.NodeId)
                value = item.Value.Value.Value if item.Value is not None and item.Value.Value is not None else None
                if variable is None or item.AttributeId != ua.AttributeIds.Value:
                    verdicts.append(None)
                elif not variable.writable:
                    verdicts.append(ua.StatusCode(ua.StatusCodes.BadNotWritable))
                elif (variable.write_range is not None and isinstance(value, int | float)
                      and not variable.write_range[0] <= value <= variable.write_range[1]):
                    verdicts.append(ua.StatusCode(ua.StatusCodes.BadOutOfRange))
                else:
                    verdicts.append(None)
            passed = [item for item, verdict in zip(params.NodesToWrite, verdicts, strict=True) if verdict is None]
            keywords = {"user": user} if user is not None else {}
            answers = iter(await plain_write(ua.WriteParameters(NodesToWrite=passed), **keywords) if passed else [])
            results = [verdict if verdict is not None else next(answers) for verdict in verdicts]
            for item, result in zip(params.NodesToWrite, results, strict=True):
                variable = by_node.get(item.NodeId)
                if variable is not None and result.is_good():
                    variable.writes += 1
                    variable.value = item.Value.Value.Value
            return results

        service.write = write  # type: ignore[method-assign]

    def _break_translate(self, server: Server) -> None:
        service = server.iserver.view_service
        plain_translate = service.translate_browsepaths_to_nodeids

        def translate(browsepaths: list[ua.BrowsePath]) -> list[ua.BrowsePathResult]:
            self.translate_calls += 1
            if self.translate_fault == "refuse":
                raise UaStatusCodeError(ua.StatusCodes.BadTooManyOperations)  # type: ignore[no-untyped-call]
            assert server.bserver is not None
            for client in list(server.bserver.clients):
                if client.transport is None:
                    continue
                if self.translate_fault == "hang-up":
                    client.transport.close()
                elif self.translate_fault == "mute":
                    client.transport.write = _discard  # type: ignore[method-assign]
            return plain_translate(browsepaths)

        service.translate_browsepaths_to_nodeids = translate  # type: ignore[method-assign]

    def connections(self) -> int:
        """Client connections the server holds open (to prove that a failed connect leaves none behind)."""
        assert self._server is not None and self._server.bserver is not None
        return len(self._server.bserver.clients)

    def advertise_certificate(self, der: bytes) -> None:
        """Offer `der` as the server's certificate from now on, as a server with a damaged store might."""
        assert self._server is not None
        for endpoint in self._server.iserver.endpoints:
            endpoint.ServerCertificate = der

    def monitored_items(self) -> int:
        """Monitored items the server holds, over all sessions (to prove no duplicates)."""
        assert self._server is not None
        service = self._server.iserver.subscription_service
        return sum(len(s.monitored_item_srv._monitored_items) for s in service.subscriptions.values())

    async def set_value(self, name: str, value: float | int | bool, status: int = 0) -> None:
        variable = next(v for v in self.variables if v.name == name)
        variable.value = value
        assert self._server is not None
        # Straight into the address space, as the PLC's own logic changes it: not a client's Write.
        await self._server.write_attribute_value(
            variable.node.nodeid, ua.DataValue(ua.Variant(value, variable.variant), ua.StatusCode(status),
                                               SourceTimestamp=datetime.datetime.now(datetime.UTC)))

    async def _tick_forever(self) -> None:
        rng = random.Random(7)
        while True:
            await asyncio.sleep(self.period)  # a simulated process, not synchronisation
            for variable in self.variables:
                await self._tick(variable, rng)
            assert self._total is not None
            await self._total.write_value(self.monitored_items())

    async def _tick(self, variable: SimVariable, rng: random.Random) -> None:
        if variable.value is None:
            return  # never written: stays null
        if isinstance(variable.value, bool):
            if variable.drift and rng.random() < variable.drift:
                await self.set_value(variable.name, not variable.value)
            return
        if variable.name.endswith("Volume"):  # a totaliser only grows
            await self.set_value(variable.name, round(float(variable.value) + rng.uniform(0.1, 0.3), 3))
        elif variable.drift:
            await self.set_value(variable.name, round(float(variable.value) + rng.uniform(-1, 1) * variable.drift, 4))

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        if self._server is not None:
            await self._server.stop()
            # asyncua's stop leaves the sessions of clients that were still connected, each with a timer task;
            # close them as a real server's shutdown ends them.
            for session in list(self._server.iserver._external_sessions.values()):
                await session.close_session()


def _discard(data: bytes | bytearray | memoryview) -> None:
    """A transport's write that sends nothing: a server that hangs without closing the connection."""


class _SimUsers:
    def __init__(self, users: dict[str, str]) -> None:
        self._users = users

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User)
        return None


async def make_server_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed server certificate and key (for the simulator and the tests)."""
    os.makedirs(directory, exist_ok=True)
    cert_file, key_file = directory / "server-cert.der", directory / "server-key.pem"
    await cert_gen.setup_self_signed_certificate(
        key_file, cert_file, "urn:municipal-gateway:sim:server", host,
        [ExtendedKeyUsageOID.SERVER_AUTH], {"commonName": "simulated station"})
    return cert_file, key_file

async def serve(args: argparse.Namespace) -> None:
    variables = gas_station_variables()
    variables += [SimVariable(f"Bench.Value{i:04d}", float(i), drift=1.0) for i in range(args.extra)]
    certificate = key = None
    if args.secure is not None:
        certificate, key = await make_server_certificate(args.secure)
    users = dict(u.split(":", 1) for u in args.user) if args.user else None
    simulator = StationSimulator(args.port, variables, period=0 if args.demo else args.period, users=users,
                                 certificate=certificate, private_key=key, decoy_namespaces=args.decoy)
    await simulator.start()
    in_service = asyncio.create_task(_like_a_station_in_service(simulator)) if args.demo else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The parent closing our stdin (or dying) stops us too, so no simulator outlives its test.
    watching = True
    try:
        loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(sys.stdin.fileno(), 1) else None)
    except (OSError, ValueError):  # stdin is a file or /dev/null: only signals stop us
        watching = False
    print(f"ready opc.tcp://127.0.0.1:{args.port}/station", flush=True)
    try:
        await stop.wait()
    finally:
        if watching:
            loop.remove_reader(sys.stdin.fileno())
        if in_service is not None:
            in_service.cancel()
            await asyncio.gather(in_service, return_exceptions=True)
        await simulator.stop()


async def _like_a_station_in_service(simulator: StationSimulator) -> None:
    """Values that stay where a station in service keeps them (`--demo`, which may run for hours): pressures
    and temperature along slow waves, the flow following demand, the totaliser counting that flow, and a
    methane detector reading a background of a few %LEL. The valve stays open and the alarm quiet."""
    rng = random.Random(3)
    started = last = time.monotonic()
    volume = float(next(v.value for v in simulator.variables if v.name == "Station.StandardVolume") or 0.0)
    while True:
        await asyncio.sleep(1.0)  # a simulated process, not synchronisation
        now = time.monotonic()
        seconds = now - started
        flow = 820 + 160 * math.sin(seconds / 90) + rng.uniform(-8, 8)
        volume += flow * (now - last) / 3600
        last = now
        values = {
            "Station.InletPressure": 350 + 12 * math.sin(seconds / 70) + rng.uniform(-1, 1),
            "Station.OutletPressure": 2.6 + 0.04 * math.sin(seconds / 25) + rng.uniform(-0.005, 0.005),
            "Station.GasTemperature": 12.5 + 0.8 * math.sin(seconds / 150) + rng.uniform(-0.05, 0.05),
            "Station.StandardFlow": flow,
            "Station.StandardVolume": volume,
            "Station.MethaneLel": max(0.0, 2 + 1.5 * math.sin(seconds / 45) + rng.uniform(-0.3, 0.3)),
        }
        for name, value in values.items():
            await simulator.set_value(name, round(value, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--period", type=float, default=1.0, help="seconds between value changes (0: never)")
    parser.add_argument("--extra", type=int, default=0, help="extra changing variables Bench.Value0000…")
    parser.add_argument("--secure", type=Path, default=None,
                        help="directory for the server certificate; offers only secured endpoints")
    parser.add_argument("--user", action="append", default=[], help="NAME:PASSWORD accepted (repeatable)")
    parser.add_argument("--decoy", type=int, default=0, help="namespaces registered before ours")
    parser.add_argument("--demo", action="store_true",
                        help="values move as a station in service (bounded), instead of every --period")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
